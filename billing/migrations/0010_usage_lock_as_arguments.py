"""The usage-totals trigger and rebuild take the usage lock's key as arguments.

Migration 0006 wrote the key of the usage lock into the SQL of both functions, a second
definition beside the services' one. The trigger function now reads it from its trigger's
arguments (``TG_ARGV``), which ``CREATE TRIGGER`` passes from ``billing.locks.USAGE_LOCK``;
the rebuild takes it as two parameters (``billing.services.usage_totals_rebuild`` passes
them). The behaviour is unchanged: a statement trigger over each INSERT's new rows (COPY
included), taking the lock shared as ingestion does; a rebuild takes it alone.
"""

from django.db import migrations

from billing.locks import USAGE_LOCK

LOCK_KEY, LOCK_ID = (int(part) for part in USAGE_LOCK)  # integers: safe to write into DDL

TOTAL_ADD = """CREATE OR REPLACE FUNCTION billing_usage_total_add() RETURNS trigger AS $$
    DECLARE
        first_open date;
    BEGIN
        -- The usage lock, shared: its two keys are the trigger's arguments.
        IF TG_NARGS <> 2 THEN
            RAISE EXCEPTION 'billing_usage_total_add takes the usage lock''s two keys as arguments';
        END IF;
        PERFORM pg_advisory_xact_lock_shared(TG_ARGV[0]::integer, TG_ARGV[1]::integer);
        SELECT (MAX(period) + interval '1 month')::date INTO first_open FROM billing_billingperiod;
        INSERT INTO billing_usagetotal (contract_id, period, billed_in, gpu_seconds, records)
        SELECT contract_id, period, GREATEST(period, first_open), SUM(gpu_seconds), COUNT(*)
        FROM new_usage
        GROUP BY contract_id, period, GREATEST(period, first_open)
        ORDER BY 1, 2, 3  -- rows locked in one order: concurrent batches cannot deadlock here
        ON CONFLICT (contract_id, period, billed_in) DO UPDATE
            SET gpu_seconds = billing_usagetotal.gpu_seconds + EXCLUDED.gpu_seconds,
                records = billing_usagetotal.records + EXCLUDED.records;
        RETURN NULL;
    END $$ LANGUAGE plpgsql"""

TRIGGER = f"""CREATE TRIGGER usage_total_add
       AFTER INSERT ON billing_usagerecord REFERENCING NEW TABLE AS new_usage
       FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_total_add({LOCK_KEY}, {LOCK_ID})"""

# Totals from the records themselves: each record to the close that billed it (the first
# close of its month or later whose watermark covers it) or, if none has, to the close that
# will. After a bulk load made with triggers disabled.
REBUILD = """CREATE FUNCTION billing_usage_totals_rebuild(lock_key integer, lock_id integer) RETURNS void AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(lock_key, lock_id);
        DELETE FROM billing_usagetotal;
        INSERT INTO billing_usagetotal (contract_id, period, billed_in, gpu_seconds, records)
        SELECT contract_id, period, billed_in, SUM(gpu_seconds), COUNT(*)
        FROM (
            SELECT u.contract_id, u.period, u.gpu_seconds,
                   COALESCE(
                       (SELECT MIN(b.period) FROM billing_billingperiod b
                        WHERE b.period >= u.period AND b.usage_watermark >= u.id),
                       GREATEST(u.period, (SELECT (MAX(period) + interval '1 month')::date FROM billing_billingperiod))
                   ) AS billed_in
            FROM billing_usagerecord u
        ) usage
        GROUP BY contract_id, period, billed_in;
    END $$ LANGUAGE plpgsql"""

FORWARD = [
    TOTAL_ADD,
    "DROP TRIGGER usage_total_add ON billing_usagerecord",
    TRIGGER,
    "DROP FUNCTION billing_usage_totals_rebuild()",
    REBUILD,
]

# Back to migration 0006's functions and trigger, the lock's key written into their SQL.
LOCK_IN_SQL = f"{LOCK_KEY}, {LOCK_ID}"
BACKWARD = [
    "DROP FUNCTION billing_usage_totals_rebuild(integer, integer)",
    REBUILD.replace("(lock_key integer, lock_id integer)", "()").replace("lock_key, lock_id", LOCK_IN_SQL),
    "DROP TRIGGER usage_total_add ON billing_usagerecord",
    TRIGGER.replace(f"({LOCK_IN_SQL})", "()"),
    TOTAL_ADD.replace("TG_ARGV[0]::integer, TG_ARGV[1]::integer", LOCK_IN_SQL),
]


class Migration(migrations.Migration):
    dependencies = [("billing", "0009_payout_net_exact")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
