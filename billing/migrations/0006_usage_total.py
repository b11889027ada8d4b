"""Usage totals kept by PostgreSQL for the month close; one composite key on invoice lines.

- ``billing_usagetotal`` holds usage per (contract, usage month, month whose close bills
  it). A statement trigger over each INSERT's new rows (COPY included) adds to it, under
  the usage lock taken shared as ingestion takes it, so a close (which takes it alone)
  reads whole batches only. Existing usage is summed in, each record to the close that
  billed it (the first close of its month or later whose watermark covers it) or, if none
  has, to the close that will. Usage records become append-only, so totals cannot drift.
- An invoice line's contract and provider are checked by one composite key against the
  contract's (id, provider) instead of two single keys: one lookup per line, and the line
  can only name the contract's own provider.
"""

import django.db.models.deletion
from django.db import migrations, models

from billing.locks import USAGE_LOCK as LOCK_KEYS

USAGE_LOCK = ", ".join(str(int(key)) for key in LOCK_KEYS)  # written into the SQL (see migration 0010)

FORWARD = [
    """ALTER TABLE billing_invoiceline ADD CONSTRAINT invoice_line_contract_of_provider
       FOREIGN KEY (contract_id, provider_id) REFERENCES broker_contract (id, provider_id)
       DEFERRABLE INITIALLY DEFERRED""",
    f"""CREATE OR REPLACE FUNCTION billing_usage_total_add() RETURNS trigger AS $$
    DECLARE
        first_open date;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({USAGE_LOCK});
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
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER usage_total_add
       AFTER INSERT ON billing_usagerecord REFERENCING NEW TABLE AS new_usage
       FOR EACH STATEMENT EXECUTE FUNCTION billing_usage_total_add()""",
    """CREATE OR REPLACE FUNCTION billing_usage_append_only() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'usage records are append-only' USING ERRCODE = '23514';
    END $$ LANGUAGE plpgsql""",
    """CREATE TRIGGER usage_append_only BEFORE UPDATE OR DELETE ON billing_usagerecord
       FOR EACH ROW EXECUTE FUNCTION billing_usage_append_only()""",
    # Totals from the records themselves: each record to the close that billed it (the first
    # close of its month or later whose watermark covers it) or, if none has, to the close
    # that will. For this migration, and after a bulk load made with triggers disabled.
    f"""CREATE OR REPLACE FUNCTION billing_usage_totals_rebuild() RETURNS void AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock({USAGE_LOCK});
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
    END $$ LANGUAGE plpgsql""",
    "SELECT billing_usage_totals_rebuild()",
]
BACKWARD = [
    "DELETE FROM billing_usagetotal",
    "DROP FUNCTION IF EXISTS billing_usage_totals_rebuild()",
    "DROP TRIGGER IF EXISTS usage_append_only ON billing_usagerecord",
    "DROP FUNCTION IF EXISTS billing_usage_append_only()",
    "DROP TRIGGER IF EXISTS usage_total_add ON billing_usagerecord",
    "DROP FUNCTION IF EXISTS billing_usage_total_add()",
    "ALTER TABLE billing_invoiceline DROP CONSTRAINT IF EXISTS invoice_line_contract_of_provider",
]


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0005_usage_keys'),
        ('broker', '0004_lean_keys_and_indexes'),
        ('marketplace', '0005_node_node_out_of_service'),
    ]

    operations = [
        migrations.AlterField(
            model_name='invoiceline',
            name='contract',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='invoice_lines', to='broker.contract'),
        ),
        migrations.AlterField(
            model_name='invoiceline',
            name='provider',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='marketplace.organization'),
        ),
        migrations.CreateModel(
            name='UsageTotal',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('period', models.DateField(help_text='First day of the UTC month the usage falls in.')),
                ('billed_in', models.DateField(help_text='First day of the month whose close bills it.')),
                ('gpu_seconds', models.DecimalField(decimal_places=3, max_digits=24)),
                ('records', models.PositiveBigIntegerField()),
                ('contract', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='broker.contract')),
            ],
            options={
                'indexes': [models.Index(fields=['billed_in'], name='usage_total_billed_in')],
                'constraints': [models.UniqueConstraint(fields=('contract', 'period', 'billed_in'), name='usage_total_unique')],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
