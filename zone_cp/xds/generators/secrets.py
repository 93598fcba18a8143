"""Secrets (SDS over ADS): the proxy's workload certificate per service it serves, and the mesh CA."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from zonemesh.shared.resources.model import Resource
from zonemesh.zone_cp.xds.context import MeshContext, services
from zonemesh.zone_cp.xds.envoy import ca_secret_name, identity_secret_name
from zonemesh.zone_cp.xds.policies import MatchedPolicies
from zonemesh.zone_cp.xds.resources import SECRET, ResourceSet


def _identity(ctx: MeshContext, service: str) -> secret_pb2.Secret:
    cert = ctx.certs.get(service)
    if cert is None:
        raise ValueError(f"no workload certificate for service {service!r} in mesh {ctx.name!r}")
    name = identity_secret_name(service)
    # Kept across rounds while the certificate and key are the same (kept.py).
    return ctx.keep(
        ("identity-secret", name, cert.cert_pem, cert.key_pem),
        SECRET,
        lambda: secret_pb2.Secret(
            name=name,
            tls_certificate=common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(inline_bytes=cert.cert_pem),
                private_key=base_pb2.DataSource(inline_bytes=cert.key_pem),
            ),
        ),
    )


def generate(ctx: MeshContext, proxy: Resource, policies: MatchedPolicies, resources: ResourceSet) -> None:
    if ctx.mtls is None:
        return
    own = services(proxy)
    for service in own:
        key = ("secret", service)
        secret = ctx.memo.get(key)
        if secret is None:
            secret = ctx.memo[key] = _identity(ctx, service)
        resources.add(SECRET, identity_secret_name(service), secret)
    if not own:
        return
    ca_key = ("secret-ca", ctx.name)
    ca = ctx.memo.get(ca_key)
    if ca is None:
        ca_pem = ctx.certs[own[0]].ca_pem
        name = ca_secret_name(ctx.name)
        ca = ctx.memo[ca_key] = ctx.keep(
            ("ca-secret", name, ca_pem),
            SECRET,
            lambda: secret_pb2.Secret(
                name=name,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=ca_pem)
                ),
            ),
        )
    resources.add(SECRET, ca_secret_name(ctx.name), ca)
