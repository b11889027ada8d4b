"""Idempotency records move from core to marketplace, with the API keys they belong to.

The table is kept (no record is lost, so a retry after the deploy still replays) and renamed.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0002_audit_event"),
        ("marketplace", "0005_node_node_out_of_service"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="IdempotencyRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("key", models.CharField(max_length=255)),
                        ("fingerprint", models.CharField(help_text="SHA-256 of method, path and body.", max_length=64)),
                        ("response_status", models.PositiveSmallIntegerField(null=True)),
                        ("response_body", models.JSONField(null=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        (
                            "organization",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.CASCADE, to="marketplace.organization"
                            ),
                        ),
                    ],
                    options={
                        "db_table": "core_idempotencyrecord",
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("organization", "key"), name="idempotency_key_unique_per_org"
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.AlterModelTable(name="idempotencyrecord", table=None),
    ]
