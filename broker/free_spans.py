"""A listing's free nodes for a window, found without reading the rest of the listing.

``broker_freespan`` holds, for every reserved node (a listing node not released), its free
hours: the listing node's window less the hours its node is allocated at the listing node's
depth (a resale's, broker.resale, sells again hours sold at the depth below), as maximal ranges.
PostgreSQL keeps it in the transaction that sells or frees anything (the triggers of
migration 0008), so a node is free for [starts, ends) exactly when one of its spans contains
that range. ``FREE_NODES`` walks a listing's nodes that have spans in node order, one index
probe per node, and stops at the first ``limit`` nodes that fit: first fit, which packs sales
onto the lowest nodes and keeps the others whole for long bookings. A node sold out for the
listing's window has no span, so the walk never meets it, however much of the listing is sold;
and a node cut into many spans costs one probe, as a whole one does: what the walk reads is
the nodes with free hours that do not cover the window, which first fit keeps few.

``FREE_SPANS_DRIFT`` compares the kept rows with the definition, the SQL function
``broker_freespan_definition`` (migration 0013) that the triggers' rebuild reads too; the tests
run it after every test that writes them.
"""

from django.db import connection

# A listing's free nodes for a window: (listing node id, node id), at most %(limit)s, in
# service; the booking statement (broker.booking) runs it as its step "free". It walks the
# listing's nodes that have spans, in node order, one index probe each (a loose index scan:
# "walk"), and for each reads only the span that could contain the window, the last one to
# start by the window's start ("fit"); so a node cut into many spans by many short sales costs
# one probe, as a whole one does. The lateral join keeps the walk's order: first fit.
FREE_NODES = """
    WITH RECURSIVE walk AS (
        (SELECT f.node_id FROM broker_freespan f WHERE f.listing_id = %(listing)s ORDER BY f.node_id LIMIT 1)
        UNION ALL
        SELECT (SELECT f.node_id FROM broker_freespan f
                WHERE f.listing_id = %(listing)s AND f.node_id > walk.node_id ORDER BY f.node_id LIMIT 1)
        FROM walk WHERE walk.node_id IS NOT NULL
    )
    SELECT fit.listing_node_id AS id, fit.node_id
    FROM walk CROSS JOIN LATERAL (
        SELECT span.listing_node_id, span.node_id
        FROM (SELECT f.listing_node_id, f.node_id, f.ends_at FROM broker_freespan f
              WHERE f.listing_id = %(listing)s AND f.node_id = walk.node_id AND f.starts_at <= %(starts_at)s
              ORDER BY f.starts_at DESC LIMIT 1) AS span
        WHERE span.ends_at >= %(ends_at)s
          AND EXISTS (SELECT 1 FROM marketplace_node n WHERE n.id = span.node_id AND n.status = %(node_in_service)s)
    ) AS fit
    LIMIT %(limit)s"""

# The spans as defined (the function ``broker_freespan_definition`` of migration 0013, which
# the triggers' rebuild reads too), against the spans as kept: a row per difference, none when
# they agree.
FREE_SPANS_DRIFT = """
WITH expected AS (
    SELECT * FROM broker_freespan_definition(ARRAY(SELECT DISTINCT node_id FROM marketplace_listingnode))
), kept AS (
    SELECT listing_id, listing_node_id, node_id, starts_at, ends_at FROM broker_freespan
)
SELECT 'missing', * FROM (SELECT * FROM expected EXCEPT ALL SELECT * FROM kept) AS missing
UNION ALL
SELECT 'extra', * FROM (SELECT * FROM kept EXCEPT ALL SELECT * FROM expected) AS extra
ORDER BY 3, 5"""


def free_spans_drift() -> list[tuple]:
    """Where the kept spans differ from their definition: ('missing' | 'extra', listing,
    listing node, node, starts_at, ends_at) rows; empty when they agree."""
    with connection.cursor() as cursor:
        cursor.execute(FREE_SPANS_DRIFT)
        return cursor.fetchall()
