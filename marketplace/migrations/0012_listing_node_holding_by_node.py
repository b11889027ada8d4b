"""Search finds the reservations of the few nodes out of service in one index-only scan.

The availability search starts from the nodes out of service and needs the listing and id of
each reservation that holds one. This btree answers that from the index alone (the node's
unreleased reservations, with their listing and id). Without it PostgreSQL may pick the
exclusion constraint's GiST index (0003), which it takes for as cheap but which costs about
three times the CPU, a few milliseconds in every search.

Written in SQL, as 0003's constraints are: only the search's statement uses it.
"""

from django.db import migrations

FORWARD = """
    CREATE INDEX listing_node_holding_by_node ON marketplace_listingnode (node_id)
    INCLUDE (listing_id, id) WHERE NOT released
"""
BACKWARD = "DROP INDEX IF EXISTS listing_node_holding_by_node"


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0011_idempotency_response_bytes")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
