"""Listings and their reservations carry a depth: 0 for a provider's own nodes, d + 1 for a
resale of hours bought at depth d (broker.resale).

A node is reserved at most once per depth for any hour (the exclusion constraint of 0003,
now per depth), so a resale's reservation of hours its seller bought never clashes with the
reservation those hours were bought from; and a composite key holds each reservation's depth
to its listing's. The allocations' side is broker migration 0011.
"""

from django.db import migrations, models

FORWARD = [
    "ALTER TABLE marketplace_listing ADD CONSTRAINT listing_id_depth_key UNIQUE (id, depth)",
    """ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_depth_is_listings
       FOREIGN KEY (listing_id, depth) REFERENCES marketplace_listing (id, depth) DEFERRABLE INITIALLY DEFERRED""",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT listing_node_no_overlap",
    """ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, depth WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&)
       WHERE (NOT released)""",
    # What an allocation's composite key refers to (broker 0011): its listing node, node and depth.
    "ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_id_node_depth_key UNIQUE (id, node_id, depth)",
]
BACKWARD = [
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT listing_node_id_node_depth_key",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT listing_node_no_overlap",
    """ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_no_overlap
       EXCLUDE USING gist (node_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&) WHERE (NOT released)""",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT listing_node_depth_is_listings",
    "ALTER TABLE marketplace_listing DROP CONSTRAINT listing_id_depth_key",
]


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0013_ssh_keys_sla_reliability'),
    ]

    operations = [
        migrations.AddField(
            model_name='listing',
            name='depth',
            field=models.PositiveSmallIntegerField(db_default=0, default=0, editable=False, help_text="0: the provider's own nodes; 1 or more: capacity resold by a buyer (how many sales deep)."),
        ),
        migrations.AddField(
            model_name='listingnode',
            name='depth',
            field=models.PositiveSmallIntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
