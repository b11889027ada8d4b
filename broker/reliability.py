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
clusters, ``PROVIDER_RELIABILITY`` for providers), for some clusters and providers (an incident
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

# The three figures of each cluster (all, or those in %(clusters)s) over [%(since)s, %(until)s).
CLUSTER_RELIABILITY = """
WITH failed AS (
    -- Each node's failed hours in the window: its failure incidents, clipped, as one union.
    SELECT i.cluster_id, range_agg(tstzrange(GREATEST(i.started_at, %(since)s),
                                             LEAST(COALESCE(i.resolved_at, %(until)s), %(until)s), '[)')) AS hours
    FROM broker_incident i
    WHERE i.kind = %(failure)s AND i.started_at < %(until)s AND COALESCE(i.resolved_at, %(until)s) > %(since)s
      AND (%(clusters)s::bigint[] IS NULL OR i.cluster_id = ANY (%(clusters)s::bigint[]))
    GROUP BY i.cluster_id, i.node_id
), lost AS (
    SELECT f.cluster_id, SUM(EXTRACT(EPOCH FROM upper(piece) - lower(piece))) AS seconds
    FROM failed f CROSS JOIN LATERAL unnest(f.hours) AS piece
    GROUP BY f.cluster_id
), replaced AS (
    SELECT i.cluster_id, AVG(GREATEST(EXTRACT(EPOCH FROM r.created_at - i.started_at), 0)) AS seconds
    FROM broker_replacement r JOIN broker_incident i ON i.id = r.incident_id
    WHERE r.created_at >= %(since)s AND r.created_at <= %(until)s
      AND (%(clusters)s::bigint[] IS NULL OR i.cluster_id = ANY (%(clusters)s::bigint[]))
    GROUP BY i.cluster_id
), late AS (
    SELECT k.cluster_id, COUNT(*) AS contracts
    FROM broker_contract k
    WHERE k.delivery_late_at >= %(since)s AND k.delivery_late_at <= %(until)s
      AND (%(clusters)s::bigint[] IS NULL OR k.cluster_id = ANY (%(clusters)s::bigint[]))
    GROUP BY k.cluster_id
), nodes AS (
    SELECT n.cluster_id, COUNT(*) AS nodes
    FROM marketplace_node n
    WHERE %(clusters)s::bigint[] IS NULL OR n.cluster_id = ANY (%(clusters)s::bigint[])
    GROUP BY n.cluster_id
)
UPDATE marketplace_cluster c
SET availability_30d = CASE WHEN COALESCE(nodes.nodes, 0) = 0 THEN 100
        ELSE GREATEST(ROUND(100 * (1 - COALESCE(lost.seconds, 0) / (nodes.nodes * %(hours)s * 3600.0)), 4), 0) END,
    mean_time_to_replace_seconds = ROUND(replaced.seconds),
    late_deliveries_30d = COALESCE(late.contracts, 0),
    reliability_measured_at = %(until)s
FROM marketplace_cluster target
LEFT JOIN nodes ON nodes.cluster_id = target.id
LEFT JOIN lost ON lost.cluster_id = target.id
LEFT JOIN replaced ON replaced.cluster_id = target.id
LEFT JOIN late ON late.cluster_id = target.id
WHERE c.id = target.id AND (%(clusters)s::bigint[] IS NULL OR target.id = ANY (%(clusters)s::bigint[]))
"""

# The same figures of each provider (all, or those in %(providers)s), over all its clusters.
PROVIDER_RELIABILITY = """
WITH failed AS (
    SELECT i.provider_id, range_agg(tstzrange(GREATEST(i.started_at, %(since)s),
                                              LEAST(COALESCE(i.resolved_at, %(until)s), %(until)s), '[)')) AS hours
    FROM broker_incident i
    WHERE i.kind = %(failure)s AND i.started_at < %(until)s AND COALESCE(i.resolved_at, %(until)s) > %(since)s
      AND (%(providers)s::bigint[] IS NULL OR i.provider_id = ANY (%(providers)s::bigint[]))
    GROUP BY i.provider_id, i.node_id
), lost AS (
    SELECT f.provider_id, SUM(EXTRACT(EPOCH FROM upper(piece) - lower(piece))) AS seconds
    FROM failed f CROSS JOIN LATERAL unnest(f.hours) AS piece
    GROUP BY f.provider_id
), replaced AS (
    SELECT i.provider_id, AVG(GREATEST(EXTRACT(EPOCH FROM r.created_at - i.started_at), 0)) AS seconds
    FROM broker_replacement r JOIN broker_incident i ON i.id = r.incident_id
    WHERE r.created_at >= %(since)s AND r.created_at <= %(until)s
      AND (%(providers)s::bigint[] IS NULL OR i.provider_id = ANY (%(providers)s::bigint[]))
    GROUP BY i.provider_id
), late AS (
    SELECT k.provider_id, COUNT(*) AS contracts
    FROM broker_contract k
    WHERE k.delivery_late_at >= %(since)s AND k.delivery_late_at <= %(until)s
      AND (%(providers)s::bigint[] IS NULL OR k.provider_id = ANY (%(providers)s::bigint[]))
    GROUP BY k.provider_id
), nodes AS (
    SELECT c.provider_id, COUNT(*) AS nodes
    FROM marketplace_node n JOIN marketplace_cluster c ON c.id = n.cluster_id
    WHERE %(providers)s::bigint[] IS NULL OR c.provider_id = ANY (%(providers)s::bigint[])
    GROUP BY c.provider_id
)
UPDATE marketplace_organization o
SET availability_30d = CASE WHEN COALESCE(nodes.nodes, 0) = 0 THEN NULL
        ELSE GREATEST(ROUND(100 * (1 - COALESCE(lost.seconds, 0) / (nodes.nodes * %(hours)s * 3600.0)), 4), 0) END,
    mean_time_to_replace_seconds = ROUND(replaced.seconds),
    late_deliveries_30d = COALESCE(late.contracts, 0),
    reliability_measured_at = %(until)s
FROM marketplace_organization target
LEFT JOIN nodes ON nodes.provider_id = target.id
LEFT JOIN lost ON lost.provider_id = target.id
LEFT JOIN replaced ON replaced.provider_id = target.id
LEFT JOIN late ON late.provider_id = target.id
WHERE o.id = target.id AND target.is_provider
  AND (%(providers)s::bigint[] IS NULL OR target.id = ANY (%(providers)s::bigint[]))
"""


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
        cursor.execute(
            CLUSTER_RELIABILITY, common | {"clusters": None if cluster_ids is None else sorted(set(cluster_ids))}
        )
        clusters = cursor.rowcount
        cursor.execute(
            PROVIDER_RELIABILITY, common | {"providers": None if provider_ids is None else sorted(set(provider_ids))}
        )
        providers = cursor.rowcount
    return clusters, providers
