"""PostgreSQL guarantees that a node is never sold twice for the same hour."""

from django.db import migrations


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
    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
