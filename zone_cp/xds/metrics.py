"""Prometheus metrics of the zone's xDS side, served on the diagnostics port (:5680 /metrics).

- ``xds_generation`` (histogram, seconds): generating and serializing one proxy's config
  (observed by the reconciler, once per proxy per round);
- ``xds_resource_ignored`` (counter, by resource type): stored resources left out of generation
  because they fail validation (zone_cp/xds/usable.py), once per version;
- ``xds_delivery`` (histogram, seconds): from the moment a store change was detected until a
  proxy ACKed every response that change caused (observed by the ADS server, once per proxy
  per change);
- ``xds_nack`` (counter, by type URL): responses a proxy refused;
- ``xds_resources_sent`` (counter, by type URL and protocol, ``sotw`` or ``delta``): resources
  carried by the responses sent to proxies (State of the World sends every resource of a type on
  every change of it, delta only those that changed), and ``xds_response_bytes`` (counter, by
  protocol): the bytes of those responses;
- ``xds_stream_revoked`` (counter, by reason): open streams closed because their credential
  stopped holding: ``expired`` (the token's exp passed) or ``refused`` (revoked, signing key
  removed: found when the keys or revocations changed);
- ``xds_unauthenticated_dropped`` (counter, by reason): streams and calls dropped before they
  authenticated: ``deadline`` (no first message within ``auth_timeout``) or ``limit``
  (``xds_max_unauthenticated_streams`` were already waiting).

The buckets are fine where the targets are (a generation well under a millisecond, a
delivery under 1.3 s at 2,000 proxies) so that ``histogram_quantile`` p50/p99 are meaningful.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

GENERATION_BUCKETS = (
    0.00005,
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)
DELIVERY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.1,
    1.2,
    1.3,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
    30.0,
)

XDS_GENERATION = Histogram(
    "xds_generation", "Seconds to generate (and serialize) the config of one proxy", buckets=GENERATION_BUCKETS
)
XDS_DELIVERY = Histogram(
    "xds_delivery",
    "Seconds from a store change being detected to the proxy ACKing the config it caused",
    buckets=DELIVERY_BUCKETS,
)
XDS_RESOURCES_IGNORED = Counter(
    "xds_resource_ignored",
    "Stored resources left out of config generation because they fail validation (once per version)",
    ["resource_type"],
)
XDS_NACKS = Counter("xds_nack", "xDS responses refused by a proxy (NACK)", ["type_url"])
XDS_RESOURCES_SENT = Counter(
    "xds_resources_sent", "Resources carried by the xDS responses sent to proxies", ["type_url", "protocol"]
)
XDS_RESPONSE_BYTES = Counter("xds_response_bytes", "Bytes of the xDS responses sent to proxies", ["protocol"])
XDS_STREAMS_REVOKED = Counter(
    "xds_stream_revoked", "Open xDS streams closed because their credential stopped holding", ["reason"]
)
XDS_UNAUTHENTICATED_DROPPED = Counter(
    "xds_unauthenticated_dropped", "xDS streams and calls dropped before they authenticated", ["reason"]
)
