"""PostgreSQL guarantees that a node is never sold twice for the same hour.

SQLite (embedded mode) has no exclusion constraints; there the services take the write
lock at the start of each transaction (``transaction_mode=IMMEDIATE``), which serialises
the availability check and the write.
"""

from django.db import migrations

from core.db import postgres_only_sql

FORWARD = [
    "CREATE EXTENSION IF NOT EXISTS btree_gist",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)""",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_node_is_listing_node
       FOREIGN KEY (listing_node_id, node_id) REFERENCES marketplace_listingnode (id, node_id)
       DEFERRABLE INITIALLY DEFERRED""",
]
BACKWARD = [
    "ALTER TABLE broker_allocation DROP CONSTRAINT IF EXISTS allocation_node_is_listing_node",
    "ALTER TABLE broker_allocation DROP CONSTRAINT IF EXISTS allocation_node_no_overlap",
]



class Migration(migrations.Migration):
    dependencies = [("broker", "0001_initial"), ("marketplace", "0003_listing_node_exclusion")]
    operations = [postgres_only_sql(FORWARD, BACKWARD)]
