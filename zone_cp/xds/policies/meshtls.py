"""MeshTLS: the mode of a sidecar inbound's mesh mTLS, and the TLS versions and ciphers of mesh
mTLS on both ends (Kuma's plugin, pkg/plugins/policies/meshtls).

Only with mesh mTLS on (without it there is no mesh TLS to configure, as in Kuma). The ``from``
entries and ``rules`` of the policies selecting an inbound, least specific first, are merged
into one conf (both mean "all inbound traffic"):

- ``mode``: ``Strict`` (mTLS only) or ``Permissive`` (mTLS and plaintext on the same port: a
  TLS inspector picks the chain by transport protocol); unset, the Mesh backend's mode stays.
- ``tlsVersion`` / ``tlsCiphers``: the inbound listener's TLS parameters (the server end), and
  the client end: every cluster the proxy (a sidecar or a builtin gateway) opens to a mesh
  service. The schema allows them only with a top-level ``Mesh``, so both ends agree.

A plaintext client of a Permissive inbound still meets the inbound's RBAC filter
(MeshTrafficPermission): it has no identity, so only a rule admitting any client lets it in.
Kuma skips RBAC on the plaintext chain; zonemesh does not let plaintext bypass a permission.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.envoy import InboundPieces
from zonemesh.zone_cp.xds.policies.matching import merge_all
from zonemesh.zone_cp.xds.policies.plugin import Plugin

TYPE = "MeshTLS"
MODES = {"Strict": "STRICT", "Permissive": "PERMISSIVE"}  # MeshTLS's names -> the Mesh backend's
VERSIONS: dict[str, common_pb2.TlsParameters.TlsProtocol.ValueType] = {
    "TLSAuto": common_pb2.TlsParameters.TLS_AUTO,
    "TLS10": common_pb2.TlsParameters.TLSv1_0,
    "TLS11": common_pb2.TlsParameters.TLSv1_1,
    "TLS12": common_pb2.TlsParameters.TLSv1_2,
    "TLS13": common_pb2.TlsParameters.TLSv1_3,
}


def conf(policies: Sequence[Resource]) -> dict[str, Any] | None:
    """The merged `from` / `rules` conf of ``policies`` (least specific first), None if none."""
    return merge_all(
        entry.get("default") or {}
        for policy in policies
        for section in ("from", "rules")
        for entry in policy.spec.get(section) or []
    )


def tls_params(merged: Mapping[str, Any], *, client: bool) -> common_pb2.TlsParameters:
    """Envoy's TLS parameters for one end (an empty message: Envoy's defaults)."""
    params = common_pb2.TlsParameters()
    version = merged.get("tlsVersion") or {}
    low, high = VERSIONS[version.get("min", "TLSAuto")], VERSIONS[version.get("max", "TLSAuto")]
    if client and low == common_pb2.TlsParameters.TLSv1_3 and high == common_pb2.TlsParameters.TLS_AUTO:
        # Envoy's client default maximum is TLS 1.2: a minimum of 1.3 alone would leave the
        # client no version to offer.
        high = common_pb2.TlsParameters.TLSv1_3
    params.tls_minimum_protocol_version = low
    params.tls_maximum_protocol_version = high
    params.cipher_suites.extend(merged.get("tlsCiphers") or [])
    return params


def apply_inbound(pieces: InboundPieces, policies: Sequence[Resource]) -> None:
    if pieces.mtls is None:
        return
    merged = conf(policies)
    if merged is None:
        return
    if merged.get("mode") in MODES:
        pieces.mtls = replace(pieces.mtls, mode=MODES[merged["mode"]])
    pieces.tls_params.CopyFrom(tls_params(merged, client=False))


def apply_upstream(context: tls_pb2.UpstreamTlsContext, policies: Sequence[Resource]) -> None:
    merged = conf(policies)
    if merged is None:
        return
    params = tls_params(merged, client=True)
    if params.ByteSize():
        context.common_tls_context.tls_params.CopyFrom(params)


# Before every other plugin: what an inbound speaks comes before the filters others add to it.
# A policy has `from` (kind Mesh) or `rules` (without matches), merged alike: Kuma's IsFromAsRules.
PLUGIN = Plugin(TYPE, order=5, inbound=apply_inbound, upstream_tls=apply_upstream, from_as_rules=True)
