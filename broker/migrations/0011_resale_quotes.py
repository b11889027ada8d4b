"""Resale: allocations carry their listing node's depth, a node's hour is sold at most once per
depth, and a resale reserves only hours its seller holds. Quotes.

- The exclusion constraint of 0002 is now per depth, and the composite key from an allocation
  to its listing node covers the depth too, so a sale at depth d + 1 (a resale) takes a node's
  hour that a sale at depth d made, and never one that another sale at d + 1 made.
- A resale's reservations (depth d + 1) must lie inside hours the resold contract holds its
  nodes at depth d, the contract committed, not released, and bought by the resale's seller:
  the trigger ``listing_node_resale_held`` refuses any other (broker.resale).
- The free spans of a reservation are its window less the allocations of its node at its own
  depth (``broker_freespan_rebuild`` of 0008, again; ``FREE_SPANS_DRIFT`` is its definition).
"""

import django.db.models.deletion
from django.db import migrations, models

FREE_SPANS_REBUILD = """
CREATE OR REPLACE FUNCTION broker_freespan_rebuild(nodes bigint[], listings bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked bigint[];
BEGIN
    SELECT array_agg(id) INTO locked FROM (
        SELECT l.id FROM marketplace_listing l
        WHERE l.id = ANY (listings)
           OR l.id IN (SELECT ln.listing_id FROM marketplace_listingnode ln
                       WHERE ln.node_id = ANY (nodes) AND NOT ln.released)
        ORDER BY l.id FOR UPDATE
    ) AS listing;
    DELETE FROM broker_freespan WHERE listing_id = ANY (locked) AND node_id = ANY (nodes);
    INSERT INTO broker_freespan (listing_id, listing_node_id, node_id, starts_at, ends_at)
    SELECT ln.listing_id, ln.id, ln.node_id, lower(piece), upper(piece)
    FROM marketplace_listingnode ln
    CROSS JOIN LATERAL unnest(
        tstzmultirange(tstzrange(ln.starts_at, ln.ends_at, '[)')) - coalesce(
            (SELECT range_agg(tstzrange(a.starts_at, a.ends_at, '[)')) FROM broker_allocation a
             WHERE a.node_id = ln.node_id AND a.depth = ln.depth{extra}
               AND a.starts_at < ln.ends_at AND a.ends_at > ln.starts_at),
            '{{}}'::tstzmultirange)
    ) AS piece
    WHERE ln.node_id = ANY (nodes) AND NOT ln.released;
END $$"""

FORWARD = [
    "ALTER TABLE broker_allocation DROP CONSTRAINT allocation_node_no_overlap",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, depth WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)""",
    "ALTER TABLE broker_allocation DROP CONSTRAINT allocation_node_is_listing_node",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_is_listing_node
       FOREIGN KEY (listing_node_id, node_id, depth) REFERENCES marketplace_listingnode (id, node_id, depth)
       DEFERRABLE INITIALLY DEFERRED""",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT listing_node_id_node_key",
    FREE_SPANS_REBUILD.replace("{extra}", "").replace("{{}}", "{}"),
    """CREATE FUNCTION broker_listing_node_resale_held() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        refused bigint;
    BEGIN
        SELECT ln.id INTO refused FROM new_rows ln
        WHERE ln.depth > 0 AND NOT ln.released AND NOT EXISTS (
            SELECT 1
            FROM broker_resale r
            JOIN marketplace_listing l ON l.id = r.listing_id
            JOIN broker_contract c ON c.id = r.contract_id
            JOIN broker_allocation a ON a.contract_id = c.id
            WHERE r.listing_id = ln.listing_id AND c.lab_id = l.provider_id
              AND c.billing_mode = 'committed' AND c.released_at IS NULL
              AND a.node_id = ln.node_id AND a.depth = ln.depth - 1
              AND a.starts_at <= ln.starts_at AND a.ends_at >= ln.ends_at)
        LIMIT 1;
        IF refused IS NOT NULL THEN
            RAISE EXCEPTION 'reservation % resells hours its seller does not hold', refused
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER listing_node_resale_held_added AFTER INSERT ON marketplace_listingnode
       REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION broker_listing_node_resale_held()""",
    """CREATE TRIGGER listing_node_resale_held_changed AFTER UPDATE ON marketplace_listingnode
       REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION broker_listing_node_resale_held()""",
]
BACKWARD = [
    "DROP TRIGGER listing_node_resale_held_changed ON marketplace_listingnode",
    "DROP TRIGGER listing_node_resale_held_added ON marketplace_listingnode",
    "DROP FUNCTION broker_listing_node_resale_held()",
    FREE_SPANS_REBUILD.replace(" AND a.depth = ln.depth{extra}", "").replace("{{}}", "{}"),
    "ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_id_node_key UNIQUE (id, node_id)",
    "ALTER TABLE broker_allocation DROP CONSTRAINT allocation_node_is_listing_node",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_is_listing_node
       FOREIGN KEY (listing_node_id, node_id) REFERENCES marketplace_listingnode (id, node_id)
       DEFERRABLE INITIALLY DEFERRED""",
    "ALTER TABLE broker_allocation DROP CONSTRAINT allocation_node_no_overlap",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)""",
]


class Migration(migrations.Migration):

    dependencies = [
        ('broker', '0010_allocation_node_in_service'),
        ('marketplace', '0014_resale_depth'),
    ]

    operations = [
        migrations.AddField(
            model_name='allocation',
            name='depth',
            field=models.PositiveSmallIntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.CreateModel(
            name='Resale',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('contract', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='resales', to='broker.contract')),
                ('listing', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='resale_of', to='marketplace.listing')),
            ],
            options={
                'ordering': ['-id'],
            },
        ),
        migrations.CreateModel(
            name='Quote',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('gpu_count', models.PositiveIntegerField()),
                ('starts_at', models.DateTimeField()),
                ('duration_hours', models.PositiveIntegerField()),
                ('ends_at', models.DateTimeField()),
                ('colocated', models.BooleanField(default=True)),
                ('region', models.CharField(blank=True, default='', max_length=63)),
                ('billing_mode', models.CharField(choices=[('committed', 'Committed'), ('metered', 'Metered')], max_length=16)),
                ('lines', models.JSONField(help_text='The fill, in order: [{listing_id, gpu_count, price_per_gpu_hour}], prices as strings.')),
                ('total_amount', models.DecimalField(decimal_places=2, help_text='What the whole fill costs: GPUs x hours x price, summed over the lines.', max_digits=16)),
                ('average_price_per_gpu_hour', models.DecimalField(decimal_places=4, max_digits=12)),
                ('expires_at', models.DateTimeField()),
                ('accepted_at', models.DateTimeField(blank=True, null=True)),
                ('contract_ids', models.JSONField(blank=True, default=list, help_text='The contracts its acceptance wrote.')),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('gpu_model', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='marketplace.gpumodel')),
                ('lab', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='quotes', to='marketplace.organization')),
            ],
            options={
                'ordering': ['-created_at', '-id'],
                'indexes': [models.Index(fields=['lab', '-created_at'], name='broker_quot_lab_id_a61f83_idx')],
                'constraints': [models.CheckConstraint(condition=models.Q(('gpu_count__gte', 1)), name='quote_gpu_count_positive'), models.CheckConstraint(condition=models.Q(('ends_at__gt', models.F('starts_at'))), name='quote_window_positive')],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
