"""An index on each contract's usage by time: (contract, tstzrange(started_at, ended_at)).

Ingestion checks a batch against the stored records of its contracts that overlap it in
time (a node's or a contract's records may never use more GPUs at once than it has): this
GiST index (btree_gist, created by marketplace 0003) finds exactly those, whatever the
records' lengths. Migration 0012 replaces it with cheaper B-tree indexes.
"""

import django.contrib.postgres.indexes
from django.contrib.postgres.fields import DateTimeRangeField
from django.db import migrations, models


class TsTzRange(models.Func):
    """PostgreSQL's ``tstzrange(start, end)``: the half-open interval [start, end)."""

    function = "TSTZRANGE"
    output_field = DateTimeRangeField()


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_usage_lock_as_arguments")]

    operations = [
        migrations.AddIndex(
            model_name="usagerecord",
            index=django.contrib.postgres.indexes.GistIndex(
                models.F("contract"),
                TsTzRange("started_at", "ended_at"),
                name="usage_contract_during",
            ),
        ),
    ]
