"""Prometheus metrics of mesh certificates, on the diagnostics port (:5680 /metrics).

Where rotations are decided (global, standalone):

- ``mesh_ca_rotation_waiting_proxies{mesh}`` (gauge): proxies the current rotation step waits
  for (0 when the mesh's CA state is Stable).

Where proxies connect (zone, standalone; zone_cp/certificates.py refreshes them every check):

- ``mesh_proxy_cert_expiry_seconds{mesh}`` (gauge): seconds until the soonest-expiring
  certificate a connected proxy of the mesh holds (what it ACKed) expires;
- ``mesh_ca_cert_expiry_seconds{mesh,backend}`` (gauge): seconds until each CA the mesh's
  proxies trust expires (its first-expiring certificate, root or intermediate);
- ``mesh_certificates_expiring{mesh,kind}`` (gauge): how many proxy certificates
  (``kind="proxy"``) or CAs (``kind="ca"``) are within their warning threshold now
  (docs/identity.md: a proxy certificate in the last 10% of its lifetime, a CA within 30 days).
"""

from __future__ import annotations

from prometheus_client import Gauge

CA_ROTATION_WAITING = Gauge(
    "mesh_ca_rotation_waiting_proxies", "Proxies the current CA rotation step of the mesh waits for", ["mesh"]
)
PROXY_CERT_EXPIRY = Gauge(
    "mesh_proxy_cert_expiry_seconds",
    "Seconds until the soonest-expiring certificate held by a connected proxy of the mesh expires",
    ["mesh"],
)
CA_EXPIRY = Gauge(
    "mesh_ca_cert_expiry_seconds", "Seconds until a CA the mesh's proxies trust expires", ["mesh", "backend"]
)
CERTS_EXPIRING = Gauge(
    "mesh_certificates_expiring",
    "Proxy certificates (kind=proxy) and CAs (kind=ca) of the mesh within their expiry warning threshold",
    ["mesh", "kind"],
)
