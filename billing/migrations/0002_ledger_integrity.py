"""PostgreSQL keeps the ledger honest: every transaction balances, and entries are append-only.

The balance check is a deferred constraint trigger, so the legs of one transaction may be
inserted one by one; at commit, a transaction whose legs do not sum to zero is refused.
"""

from django.db import migrations


FORWARD = [
    """CREATE OR REPLACE FUNCTION billing_ledger_balanced() RETURNS trigger AS $$
    DECLARE
        txn bigint := COALESCE(NEW.transaction_id, OLD.transaction_id);
        total numeric;
    BEGIN
        SELECT COALESCE(SUM(amount), 0) INTO total FROM billing_ledgerentry WHERE transaction_id = txn;
        IF total <> 0 THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced by %', txn, total USING ERRCODE = '23514';
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    """CREATE CONSTRAINT TRIGGER ledger_entry_balanced
       AFTER INSERT ON billing_ledgerentry DEFERRABLE INITIALLY DEFERRED
       FOR EACH ROW EXECUTE FUNCTION billing_ledger_balanced()""",
    """CREATE OR REPLACE FUNCTION billing_ledger_append_only() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'ledger entries are append-only; post a reversing transaction' USING ERRCODE = '23514';
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON billing_ledgerentry
       FOR EACH ROW EXECUTE FUNCTION billing_ledger_append_only()""",
]
BACKWARD = [
    "DROP TRIGGER IF EXISTS ledger_entry_append_only ON billing_ledgerentry",
    "DROP FUNCTION IF EXISTS billing_ledger_append_only()",
    "DROP TRIGGER IF EXISTS ledger_entry_balanced ON billing_ledgerentry",
    "DROP FUNCTION IF EXISTS billing_ledger_balanced()",
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
