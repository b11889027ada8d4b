"""Usage records: one composite key for the contract and its provider, no redundant indexes.

A usage row paid for three foreign-key checks and six indexes. The composite foreign key
(contract, provider) -> contract (id, provider) now checks in one lookup both that the
contract exists and that it is the reporting provider's, which nothing in the database
held before; the two single-column keys it replaces are dropped. The single-column
indexes on contract and provider are covered by (contract, period) and the unique
(provider, event_id); the one on node served no query (nodes are never deleted).
"""

import django.db.models.deletion
from django.db import migrations, models


FORWARD = [
    # The key the composite foreign key below refers to (id alone is already unique).
    "ALTER TABLE broker_contract ADD CONSTRAINT contract_id_provider_key UNIQUE (id, provider_id)",
    """ALTER TABLE billing_usagerecord ADD CONSTRAINT usage_contract_of_provider
       FOREIGN KEY (contract_id, provider_id) REFERENCES broker_contract (id, provider_id)
       DEFERRABLE INITIALLY DEFERRED""",
]
BACKWARD = [
    "ALTER TABLE billing_usagerecord DROP CONSTRAINT IF EXISTS usage_contract_of_provider",
    "ALTER TABLE broker_contract DROP CONSTRAINT IF EXISTS contract_id_provider_key",
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_ledger_balance_per_statement")]

    operations = [
        migrations.AlterField(
            model_name="usagerecord",
            name="contract",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="usage_records",
                to="broker.contract",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="node",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="marketplace.node",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="provider",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="usage_records",
                to="marketplace.organization",
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
