"""A response that carried a secret is not kept by its idempotency record; records kept before
this change lose the secret they held (an API key's, shown once)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0006_idempotency_record")]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="withheld",
            field=models.BooleanField(
                default=False,
                help_text="The response carried a secret: not kept, so a retry is answered 409, not replayed.",
            ),
        ),
        migrations.RunSQL(
            "UPDATE marketplace_idempotencyrecord SET response_body = NULL, withheld = true "
            "WHERE jsonb_typeof(response_body) = 'object' AND response_body ? 'secret'",
            migrations.RunSQL.noop,
        ),
    ]
