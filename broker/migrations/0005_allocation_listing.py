"""Allocations carry the listing of their listing node, so search counts a listing's sold
nodes from one index instead of going through its contracts.

On PostgreSQL a composite foreign key (listing_node, listing) -> listing node (id, listing)
holds the copy to its listing node's listing, as (listing_node, node) already does for the
node.
"""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery


FORWARD = [
    # The key the composite foreign key below refers to.
    "ALTER TABLE marketplace_listingnode ADD CONSTRAINT listing_node_id_listing_key UNIQUE (id, listing_id)",
    """ALTER TABLE broker_allocation ADD CONSTRAINT allocation_listing_is_listing_nodes
       FOREIGN KEY (listing_node_id, listing_id) REFERENCES marketplace_listingnode (id, listing_id)
       DEFERRABLE INITIALLY DEFERRED""",
]
BACKWARD = [
    "ALTER TABLE broker_allocation DROP CONSTRAINT IF EXISTS allocation_listing_is_listing_nodes",
    "ALTER TABLE marketplace_listingnode DROP CONSTRAINT IF EXISTS listing_node_id_listing_key",
]


def copy_listing_from_listing_nodes(apps, schema_editor):
    Allocation = apps.get_model("broker", "Allocation")
    ListingNode = apps.get_model("marketplace", "ListingNode")
    Allocation.objects.using(schema_editor.connection.alias).update(
        listing_id=Subquery(ListingNode.objects.filter(pk=OuterRef("listing_node_id")).values("listing_id")[:1])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("broker", "0004_lean_keys_and_indexes"),
        ("marketplace", "0005_node_node_out_of_service"),
    ]

    operations = [
        migrations.AddField(
            model_name="allocation",
            name="listing",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="marketplace.listing",
            ),
        ),
        migrations.RunPython(copy_listing_from_listing_nodes, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="allocation",
            name="listing",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="allocations",
                to="marketplace.listing",
            ),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AddIndex(
            model_name="allocation",
            index=models.Index(fields=["listing", "ends_at", "starts_at", "listing_node"], name="allocation_listing_sold"),
        ),
    ]
