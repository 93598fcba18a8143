"""Prometheus metrics of the license (global: the authority's view; zones: the synced copy)."""

from __future__ import annotations

from prometheus_client import Gauge

DATAPLANES_ALLOWED = Gauge("license_dataplanes_allowed", "Data plane proxies the license allows (all zones)")
DATAPLANES_ACTIVE = Gauge("license_dataplanes_active", "Active data plane proxies counted by the license (all zones)")
EXPIRY_SECONDS = Gauge("license_expiry_seconds", "Seconds until the license expires (negative: expired)")
