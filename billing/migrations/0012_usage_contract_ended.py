"""B-tree indexes for the capacity check instead of 0011's GiST index.

The check reads the stored records of a contract that overlap a stretch of time. A record
of up to a day ends at most a day after the stretch, so a range of (contract, ended_at)
holds it; the few longer records are in a partial index of their own. Both cost far less
to maintain on insert than the GiST index, which cost more than the rest of a batch's insert.
"""

import datetime

import django.db.models.expressions
import django.db.models.lookups
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("billing", "0011_usage_contract_during")]

    operations = [
        migrations.RemoveIndex(model_name="usagerecord", name="usage_contract_during"),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(fields=["contract", "ended_at"], name="usage_contract_ended"),
        ),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(
                    django.db.models.lookups.GreaterThan(
                        models.ExpressionWrapper(
                            django.db.models.expressions.CombinedExpression(
                                models.F("ended_at"), "-", models.F("started_at")
                            ),
                            models.DurationField(),
                        ),
                        datetime.timedelta(days=1),
                    )
                ),
                fields=["contract", "ended_at"],
                name="usage_contract_long",
            ),
        ),
    ]
