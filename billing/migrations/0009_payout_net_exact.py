"""A statement's net is exactly gross - fee + carried_in.

The check was a half-cent band, for a database that compared decimals through floating
point; PostgreSQL compares NUMERIC exactly, so the check now says what it means. Every
stored statement is in cents, so the band and the equality accept the same rows.
"""

import django.db.models.expressions
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0008_lean_line_and_entry_indexes"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="payoutstatement",
            name="payout_net_is_gross_less_fee_and_carried",
        ),
        migrations.AddConstraint(
            model_name="payoutstatement",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    (
                        "net",
                        django.db.models.expressions.CombinedExpression(
                            django.db.models.expressions.CombinedExpression(models.F("gross"), "-", models.F("fee")),
                            "+",
                            models.F("carried_in"),
                        ),
                    )
                ),
                name="payout_net_is_gross_less_fee_and_carried",
            ),
        ),
    ]
