"""Idempotency records now belong to marketplace (its migration 0006 renames the table)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_audit_event"),
        ("marketplace", "0006_idempotency_record"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="IdempotencyRecord")],
            database_operations=[],
        ),
    ]
