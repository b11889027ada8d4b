"""PostgreSQL enforces that a node is in at most one unreleased listing for any hour."""

from django.db import migrations


FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    """ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
       WHERE (NOT released)""",
    # Lets allocations reference (listing node, node) together, so an allocation's node is
    # always the node its listing reserved.
    "ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_id_node_key UNIQUE (id, node_id)",
]
BACKWARD = [
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT IF EXISTS listing_node_id_node_key",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT IF EXISTS listing_node_no_overlap",
]



class Migration(migrations.Migration):
    dependencies = [("marketplace", "0002_gpu_catalog")]
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
