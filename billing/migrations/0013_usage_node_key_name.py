"""The usage records' node key gets a name of its own, ``usage_node_exists``.

Ingestion checks both keys of a batch (this one and ``usage_contract_of_provider``) as the
insert runs instead of at commit (``SET CONSTRAINTS ... IMMEDIATE``), and names them to do
so; Django's generated name is a hash. Django finds foreign keys by column, not by name.
"""

from django.db import migrations

FORWARD = """
DO $$
DECLARE
    key_name text;
BEGIN
    SELECT c.conname INTO STRICT key_name
    FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
    WHERE c.conrelid = 'billing_usagerecord'::regclass AND c.contype = 'f' AND a.attname = 'node_id';
    EXECUTE format('ALTER TABLE billing_usagerecord RENAME CONSTRAINT %I TO usage_node_exists', key_name);
END $$
"""
# Back to the name Django gave it (a hash of the table, column and target).
BACKWARD = """ALTER TABLE billing_usagerecord RENAME CONSTRAINT usage_node_exists
    TO billing_usagerecord_node_id_331a8c2b_fk_marketplace_node_id"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0012_usage_contract_ended")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
