"""Free spans: each reserved node's unsold hours, kept by the database as sales change.

A listing node (a node reserved by a listing, not released) is free to sell over its window
minus the hours its node is allocated. That set is kept as rows of ``broker_freespan``, one per
maximal free range, so that finding free nodes of a listing for a window is a walk of one
index in node order that stops at the first nodes that fit, and never meets a node sold out
(see ``broker.free_spans``).

Triggers keep the rows, in the transaction that changes what they are derived from:

- new allocations (a booking, a matching run's COPY): the spans they fall in are cut
  (``broker_freespan_cut``, statement-level, set-based);
- allocations shortened or removed (a release, a termination, a deleted contract), and
  listing nodes added, moved, released or removed: the spans of the nodes concerned are
  rebuilt from their definition (``broker_freespan_rebuild``).

Every writer of a listing's spans holds the listing's row lock: bookings and the matching
engine take it before they sell, and the rebuild takes it (in id order) before it reads, so two
writers never interleave on one listing's spans, and each reads after the other committed.
Every row that changes a node's hours (an allocation, a listing node) names its listing, so
spans are always found by (listing, node), through the one index booking uses.
The allocations' exclusion constraint still has the last word on every sale.
"""

from django.db import migrations, models

FORWARD = [
    # A listing's spans in node order: booking walks them (first fit) and stops at the nodes it
    # needs, and sold-out nodes have no span to walk. The triggers find a node's spans through
    # it too, by (listing, node): every row that changes a node's hours names its listing.
    """CREATE INDEX freespan_listing_nodes ON broker_freespan (listing_id, node_id, starts_at)
       INCLUDE (ends_at, listing_node_id)""",
    # The definition, for some nodes: the window of each of their unreleased listing nodes, less
    # every allocation of the node, as maximal ranges. ``listings`` names the listings whose
    # rows changed; the listings of the nodes' unreleased listing nodes are added. They are
    # locked first, in id order (see above), then the nodes' spans of those listings replaced.
    """CREATE FUNCTION broker_freespan_rebuild(nodes bigint[], listings bigint[]) RETURNS void
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
                    WHERE a.node_id = ln.node_id AND a.starts_at < ln.ends_at AND a.ends_at > ln.starts_at),
                   '{}'::tstzmultirange)
           ) AS piece
           WHERE ln.node_id = ANY (nodes) AND NOT ln.released;
       END $$""",
    # New allocations cut the spans they fall in (their listing's, on their node); what is left
    # of each span stays. Whoever inserts allocations holds their listing's lock.
    """CREATE FUNCTION broker_freespan_cut() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           WITH sold AS (
               SELECT listing_id, node_id, range_agg(tstzrange(starts_at, ends_at, '[)')) AS hours
               FROM new_allocations WHERE ends_at > starts_at GROUP BY listing_id, node_id
           ), cut AS (
               DELETE FROM broker_freespan f USING sold
               WHERE f.listing_id = sold.listing_id AND f.node_id = sold.node_id
                 AND sold.hours && tstzrange(f.starts_at, f.ends_at, '[)')
               RETURNING f.listing_id, f.listing_node_id, f.node_id, f.starts_at, f.ends_at, sold.hours
           )
           INSERT INTO broker_freespan (listing_id, listing_node_id, node_id, starts_at, ends_at)
           SELECT cut.listing_id, cut.listing_node_id, cut.node_id, lower(piece), upper(piece)
           FROM cut, unnest(tstzmultirange(tstzrange(cut.starts_at, cut.ends_at, '[)')) - cut.hours) AS piece;
           RETURN NULL;
       END $$""",
    """CREATE TRIGGER freespan_allocations_added AFTER INSERT ON broker_allocation
       REFERENCING NEW TABLE AS new_allocations FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_cut()""",
    # Anything else that changes the hours of a node rebuilds that node's spans.
    """CREATE FUNCTION broker_freespan_rebuild_changed() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           IF TG_OP = 'UPDATE' THEN
               PERFORM broker_freespan_rebuild(
                   ARRAY(SELECT node_id FROM old_rows UNION SELECT node_id FROM new_rows),
                   ARRAY(SELECT listing_id FROM old_rows UNION SELECT listing_id FROM new_rows));
           ELSE
               PERFORM broker_freespan_rebuild(
                   ARRAY(SELECT DISTINCT node_id FROM old_rows), ARRAY(SELECT DISTINCT listing_id FROM old_rows));
           END IF;
           RETURN NULL;
       END $$""",
    """CREATE FUNCTION broker_freespan_rebuild_added() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           PERFORM broker_freespan_rebuild(
               ARRAY(SELECT DISTINCT node_id FROM new_rows), ARRAY(SELECT DISTINCT listing_id FROM new_rows));
           RETURN NULL;
       END $$""",
    """CREATE TRIGGER freespan_allocations_changed AFTER UPDATE ON broker_allocation
       REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_rebuild_changed()""",
    """CREATE TRIGGER freespan_allocations_removed AFTER DELETE ON broker_allocation
       REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_rebuild_changed()""",
    """CREATE TRIGGER freespan_listing_nodes_added AFTER INSERT ON marketplace_listingnode
       REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_rebuild_added()""",
    """CREATE TRIGGER freespan_listing_nodes_changed AFTER UPDATE ON marketplace_listingnode
       REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
       FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_rebuild_changed()""",
    """CREATE TRIGGER freespan_listing_nodes_removed AFTER DELETE ON marketplace_listingnode
       REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION broker_freespan_rebuild_changed()""",
    # The spans of the market as it stands.
    """SELECT broker_freespan_rebuild(ARRAY(SELECT DISTINCT node_id FROM marketplace_listingnode),
                                      ARRAY(SELECT DISTINCT listing_id FROM marketplace_listingnode))""",
]
BACKWARD = [
    "DROP TRIGGER IF EXISTS freespan_listing_nodes_removed ON marketplace_listingnode",
    "DROP TRIGGER IF EXISTS freespan_listing_nodes_changed ON marketplace_listingnode",
    "DROP TRIGGER IF EXISTS freespan_listing_nodes_added ON marketplace_listingnode",
    "DROP TRIGGER IF EXISTS freespan_allocations_removed ON broker_allocation",
    "DROP TRIGGER IF EXISTS freespan_allocations_changed ON broker_allocation",
    "DROP TRIGGER IF EXISTS freespan_allocations_added ON broker_allocation",
    "DROP FUNCTION IF EXISTS broker_freespan_rebuild_added()",
    "DROP FUNCTION IF EXISTS broker_freespan_rebuild_changed()",
    "DROP FUNCTION IF EXISTS broker_freespan_cut()",
    "DROP FUNCTION IF EXISTS broker_freespan_rebuild(bigint[], bigint[])",
]


class Migration(migrations.Migration):
    dependencies = [("broker", "0007_request_unfilled_answers"), ("marketplace", "0011_idempotency_response_bytes")]
    operations = [
        migrations.CreateModel(
            name="FreeSpan",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("starts_at", models.DateTimeField()),
                ("ends_at", models.DateTimeField()),
                (
                    "listing",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="+",
                        to="marketplace.listing",
                    ),
                ),
                (
                    "listing_node",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="+",
                        to="marketplace.listingnode",
                    ),
                ),
                (
                    "node",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.DO_NOTHING,
                        related_name="+",
                        to="marketplace.node",
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("ends_at__gt", models.F("starts_at"))), name="freespan_hours_positive"
                    )
                ],
            },
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
