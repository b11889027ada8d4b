"""The free spans' definition written once: ``broker_freespan_definition(nodes)``.

A reserved node's free spans are its reservation's window less its node's allocations at the
reservation's depth, as maximal ranges. The rebuild of 0008 (per depth since 0011) wrote that
as a query of its own, and the drift check (``broker.free_spans.FREE_SPANS_DRIFT``) as
another. Both now read this SQL function, which PostgreSQL inlines where it is called.
"""

from django.db import migrations

DEFINITION = """
CREATE FUNCTION broker_freespan_definition(nodes bigint[])
RETURNS TABLE (listing_id bigint, listing_node_id bigint, node_id bigint, starts_at timestamptz, ends_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT ln.listing_id, ln.id, ln.node_id, lower(piece), upper(piece)
    FROM marketplace_listingnode ln
    CROSS JOIN LATERAL unnest(
        tstzmultirange(tstzrange(ln.starts_at, ln.ends_at, '[)')) - coalesce(
            (SELECT range_agg(tstzrange(a.starts_at, a.ends_at, '[)')) FROM broker_allocation a
             WHERE a.node_id = ln.node_id AND a.depth = ln.depth
               AND a.starts_at < ln.ends_at AND a.ends_at > ln.starts_at),
            '{}'::tstzmultirange)
    ) AS piece
    WHERE ln.node_id = ANY (nodes) AND NOT ln.released
$$"""

REBUILD = """
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
    SELECT d.listing_id, d.listing_node_id, d.node_id, d.starts_at, d.ends_at
    FROM broker_freespan_definition(nodes) d;
END $$"""

# 0011's rebuild, written out, for going back.
REBUILD_0011 = """
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
             WHERE a.node_id = ln.node_id AND a.depth = ln.depth
               AND a.starts_at < ln.ends_at AND a.ends_at > ln.starts_at),
            '{}'::tstzmultirange)
    ) AS piece
    WHERE ln.node_id = ANY (nodes) AND NOT ln.released;
END $$"""


class Migration(migrations.Migration):
    dependencies = [("broker", "0012_contract_signed")]

    operations = [
        migrations.RunSQL(
            [DEFINITION, REBUILD],
            [REBUILD_0011, "DROP FUNCTION broker_freespan_definition(bigint[])"],
        )
    ]
