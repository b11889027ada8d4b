"""PostgreSQL enforces that a node is in at most one unreleased listing for any hour.

SQLite (embedded mode) has no exclusion constraints; there the services take the write
lock at the start of each transaction (``transaction_mode=IMMEDIATE``), which serialises
the check and the write.
"""

from django.db import migrations

from core.db import postgres_only_sql

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
    operations = [postgres_only_sql(FORWARD, BACKWARD)]
