"""Prometheus metrics of KDS (names as Kuma's, so dashboards carry over)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ZONE_ACTIVE_CONNECTIONS = Gauge(
    "kds_zone_active_connections", "Open KDS streams per zone (global) or to global (zone)", ["zone_name"]
)
NACK_TOTAL = Counter("kds_nack_total", "KDS Changes rejected by the receiver", ["zone_name", "resource_type"])
# Resources refused one by one (shared/kds/trust.py); reason: type, invalid, mesh or ownership.
UPLOAD_REFUSED = Counter(
    "kds_upload_refused_total",
    "Resources a zone uploaded that global refused (the rest of their Changes was applied)",
    ["zone_name", "resource_type", "reason"],
)
DOWNLOAD_REFUSED = Counter(
    "kds_download_refused_total",
    "Resources global sent that this zone refused (the rest of their Changes was applied)",
    ["zone_name", "resource_type", "reason"],
)
DELTA_GENERATION = Histogram(
    "kds_delta_generation",
    "Seconds to compute and queue one delta for a peer",
    ["zone_name"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RESOURCES_SYNC = Histogram(
    "kds_resources_sync",
    "Seconds to apply one received Changes message to the store",
    ["zone_name"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
