"""Measured reliability: each cluster's and each provider's last 30 days, from incidents.

Three figures, kept on the cluster's and the provider's rows (``editable=False``: only these
statements write them) and shown in search:

- ``availability_30d`` = 100 x (1 - failed node-hours / node-hours). A node's failed hours are
  the union of its ``failure`` incidents' [started_at, resolved_at, or now while open),
  clipped to the 30 days (two reports of one outage count once). Node-hours are the nodes
  registered now x 720: a node has no registration time, so a node added during the window
  counts for the whole of it (its failures, if any, still count against it). Degradations
  do not count. 100 when nothing failed; NULL only for a provider with no node, and for
  anything never measured.
- ``mean_time_to_replace_seconds`` = the mean, over replacements made in the window, of
  replacement.created_at - incident.started_at (NULL when none was made).
- ``late_deliveries_30d`` = contracts of the cluster / provider whose ``delivery_late_at``
  falls in the window.

``reliability_measure`` runs one statement per figure set (``CLUSTER_RELIABILITY`` for
clusters, ``PROVIDER_RELIABILITY`` for providers: the one statement ``_RELIABILITY``, grouped
by either), for some clusters and providers (an incident
opened or resolved: ``broker.incidents``, on commit) or for all (hourly: the
``measure_reliability`` task).
"""

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from broker.models import Incident

WINDOW = timedelta(days=30)
WINDOW_HOURS = 720

# The three figures of each cluster or each provider (all of them, or those in %(ids)s) over
# [%(since)s, %(until)s). One statement for both: ``{key}`` is the column incidents and
# contracts name them by, ``{nodes}`` their nodes, ``{target}`` the row the figures go to.
_RELIABILITY = """
WITH failed AS (
    -- Each node's failed hours in the window: its failure incidents, clipped, as one union.
    SELECT i.{key} AS id, range_agg(tstzrange(GREATEST(i.started_at, %(since)s),
                                              LEAST(COALESCE(i.resolved_at, %(until)s), %(until)s), '[)')) AS hours
    FROM broker_incident i
    WHERE i.kind = %(failure)s AND i.started_at < %(until)s AND COALESCE(i.resolved_at, %(until)s) > %(since)s
      AND (%(ids)s::bigint[] IS NULL OR i.{key} = ANY (%(ids)s::bigint[]))
    GROUP BY i.{key}, i.node_id
), lost AS (
    SELECT f.id, SUM(EXTRACT(EPOCH FROM upper(piece) - lower(piece))) AS seconds
    FROM failed f CROSS JOIN LATERAL unnest(f.hours) AS piece
    GROUP BY f.id
), replaced AS (
    SELECT i.{key} AS id, AVG(GREATEST(EXTRACT(EPOCH FROM r.created_at - i.started_at), 0)) AS seconds
    FROM broker_replacement r JOIN broker_incident i ON i.id = r.incident_id
    WHERE r.created_at >= %(since)s AND r.created_at <= %(until)s
      AND (%(ids)s::bigint[] IS NULL OR i.{key} = ANY (%(ids)s::bigint[]))
    GROUP BY i.{key}
), late AS (
    SELECT k.{key} AS id, COUNT(*) AS contracts
    FROM broker_contract k
    WHERE k.delivery_late_at >= %(since)s AND k.delivery_late_at <= %(until)s
      AND (%(ids)s::bigint[] IS NULL OR k.{key} = ANY (%(ids)s::bigint[]))
    GROUP BY k.{key}
), nodes AS (
    SELECT owner.id, COUNT(*) AS nodes
    FROM marketplace_node n JOIN marketplace_cluster c ON c.id = n.cluster_id, {nodes} owner
    WHERE %(ids)s::bigint[] IS NULL OR owner.id = ANY (%(ids)s::bigint[])
    GROUP BY owner.id
)
UPDATE {target} t
SET availability_30d = CASE WHEN COALESCE(nodes.nodes, 0) = 0 THEN {no_nodes}
        ELSE GREATEST(ROUND(100 * (1 - COALESCE(lost.seconds, 0) / (nodes.nodes * %(hours)s * 3600.0)), 4), 0) END,
    mean_time_to_replace_seconds = ROUND(replaced.seconds),
    late_deliveries_30d = COALESCE(late.contracts, 0),
    reliability_measured_at = %(until)s
FROM {target} target
LEFT JOIN nodes ON nodes.id = target.id
LEFT JOIN lost ON lost.id = target.id
LEFT JOIN replaced ON replaced.id = target.id
LEFT JOIN late ON late.id = target.id
WHERE t.id = target.id AND {measured}
  AND (%(ids)s::bigint[] IS NULL OR target.id = ANY (%(ids)s::bigint[]))
"""


def _reliability(**parts: str) -> str:
    sql = _RELIABILITY
    for name, text in parts.items():
        sql = sql.replace("{" + name + "}", text)
    return sql


# A cluster with no node is 100% available; a provider with no node is not measured.
CLUSTER_RELIABILITY = _reliability(
    key="cluster_id", nodes="LATERAL (SELECT c.id)", target="marketplace_cluster", no_nodes="100", measured="true"
)
PROVIDER_RELIABILITY = _reliability(
    key="provider_id",
    nodes="LATERAL (SELECT c.provider_id AS id)",
    target="marketplace_organization",
    no_nodes="NULL",
    measured="target.is_provider",
)


def reliability_measure(
    *,
    cluster_ids: Iterable[int] | None = None,
    provider_ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Measure the clusters' and providers' reliability again (None: all of them); returns how
    many clusters and providers were measured."""
    until = now or timezone.now()
    common = {"since": until - WINDOW, "until": until, "hours": WINDOW_HOURS, "failure": Incident.Kind.FAILURE}
    with connection.cursor() as cursor:
        cursor.execute(CLUSTER_RELIABILITY, common | {"ids": None if cluster_ids is None else sorted(set(cluster_ids))})
        clusters = cursor.rowcount
        cursor.execute(
            PROVIDER_RELIABILITY, common | {"ids": None if provider_ids is None else sorted(set(provider_ids))}
        )
        providers = cursor.rowcount
    return clusters, providers
