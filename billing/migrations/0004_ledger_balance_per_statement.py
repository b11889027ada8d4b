"""The ledger's balance check runs once per statement instead of once per entry.

The deferred per-row trigger summed a transaction's legs once for each of its legs: a
month's close posting thousands of legs paid for that at commit. The check now runs after
each INSERT statement over the transactions it touched (a transition table), so the legs of
a transaction are written together, in one statement, as ``billing.ledger.ledger_post``
does; any statement that leaves a transaction unbalanced is refused.
"""

from django.db import migrations


FORWARD = [
    "DROP TRIGGER IF EXISTS ledger_entry_balanced ON billing_ledgerentry",
    "DROP FUNCTION IF EXISTS billing_ledger_balanced()",
    """CREATE OR REPLACE FUNCTION billing_ledger_balanced() RETURNS trigger AS $$
    DECLARE
        txn bigint;
        total numeric;
    BEGIN
        -- One index lookup per transaction touched, whatever the size of the ledger.
        SELECT touched.transaction_id, legs.total INTO txn, total
        FROM (SELECT DISTINCT transaction_id FROM new_entries) touched
        CROSS JOIN LATERAL (
            SELECT SUM(e.amount) AS total FROM billing_ledgerentry e WHERE e.transaction_id = touched.transaction_id
        ) legs
        WHERE legs.total <> 0
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced by %', txn, total USING ERRCODE = '23514';
        END IF;
        RETURN NULL;
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER ledger_entry_balanced
       AFTER INSERT ON billing_ledgerentry REFERENCING NEW TABLE AS new_entries
       FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_balanced()""",
]
BACKWARD = [
    "DROP TRIGGER IF EXISTS ledger_entry_balanced ON billing_ledgerentry",
    "DROP FUNCTION IF EXISTS billing_ledger_balanced()",
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
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_payout_check_cent_band")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
