"""Publishing events: one row per organization that must know, in the caller's transaction."""

import json
from collections.abc import Iterable
from dataclasses import dataclass

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection

# One statement for any number of events. A dedupe key already published is skipped, so a
# job that runs twice publishes once; NULL keys never conflict.
EVENTS_INSERT = """
INSERT INTO events_event (organization_id, type, data, dedupe_key, created_at)
SELECT organization_id, type, data::jsonb, dedupe_key, clock_timestamp()
  FROM unnest(%(organizations)s::bigint[], %(types)s::text[], %(data)s::text[], %(keys)s::text[])
       AS notice(organization_id, type, data, dedupe_key)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
"""


@dataclass(frozen=True)
class Notice:
    """One event to publish: its organization, its type (``EventType``), its data, and an
    optional key that makes publishing it twice publish it once."""

    organization_id: int
    type: str
    data: dict
    dedupe_key: str | None = None


def events_publish(notices: Iterable[Notice]) -> list[int]:
    """Write these events in the caller's transaction; returns the ids of those that were new.

    Webhook deliveries are made from the events by the workers (``events.tasks``), so a change
    that rolls back sends nothing.
    """
    notices = list(notices)
    if not notices:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            EVENTS_INSERT,
            {
                "organizations": [n.organization_id for n in notices],
                "types": [n.type for n in notices],
                "data": [json.dumps(n.data, cls=DjangoJSONEncoder) for n in notices],
                "keys": [n.dedupe_key for n in notices],
            },
        )
        return [row[0] for row in cursor.fetchall()]


def event_publish(*, organization_id: int, type: str, data: dict, dedupe_key: str | None = None) -> list[int]:
    """Write one event; see ``events_publish``."""
    return events_publish([Notice(organization_id, type, data, dedupe_key)])
