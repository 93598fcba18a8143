"""The provided mesh CA: the operator's CA (with its chain) and key from Secrets, and the refusal,
at API write time, of a CA that cannot work (issue 20: "Bad input")."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from zonemesh.shared.ca import MeshCA
from zonemesh.shared.ca.material import CaProblem, load_signing_ca
from zonemesh.shared.resources.manager import ResourceManager
from zonemesh.shared.resources.model import Resource
from zonemesh.shared.resources.schema import ValidationError
from zonemesh.shared.store.memory import MemoryStore

from zonemesh.testing import TestCaCert, make_ca_cert

DAY = 24 * 3600


def secret(name: str, data: bytes, mesh: str = "default") -> Resource:
    return Resource(type="Secret", name=name, mesh=mesh, spec={"data": base64.b64encode(data).decode()})


def provided_mesh(enabled: str = "ca-p", cert: str = "ca-cert", key: str = "ca-key") -> Resource:
    return Resource(
        type="Mesh",
        name="default",
        spec={
            "mtls": {
                "enabledBackend": enabled,
                "backends": [
                    {"name": "ca-b", "type": "builtin"},
                    {"name": "ca-p", "type": "provided", "conf": {"cert": {"secret": cert}, "key": {"secret": key}}},
                ],
            }
        },
    )


async def manager_with(*secrets: Resource) -> ResourceManager:
    manager = ResourceManager(MemoryStore())
    await manager.apply(Resource(type="Mesh", name="default"))
    for s in secrets:
        await manager.apply(s)
    return manager


def refusal(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {e.field: e.reason for e in exc.value.errors}


@pytest.fixture(scope="module")
def root() -> TestCaCert:
    return make_ca_cert("operator root", key_type="rsa")


@pytest.fixture(scope="module")
def intermediate(root: TestCaCert) -> TestCaCert:
    return make_ca_cert("operator mesh intermediate", issuer=root)


async def test_workload_certs_come_from_the_provided_ca_with_its_chain(
    root: TestCaCert, intermediate: TestCaCert
) -> None:
    manager = await manager_with(secret("ca-cert", intermediate.chain(root)), secret("ca-key", intermediate.key_pem))
    await manager.apply(provided_mesh())
    cert_pem, key_pem, trusted_pem, _ = await MeshCA(manager.store).workload_cert("default", "web")
    chain = x509.load_pem_x509_certificates(cert_pem)
    leaf = chain[0]
    # The proxy presents its certificate and the intermediate; it trusts the root only.
    assert [c.subject for c in chain[1:]] == [x509.load_pem_x509_certificate(intermediate.cert_pem).subject]
    assert x509.load_pem_x509_certificates(trusted_pem) == [x509.load_pem_x509_certificate(root.cert_pem)]
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://default/web",
        "kuma://kuma.io/service/web",
    ]
    leaf.verify_directly_issued_by(chain[1])
    chain[1].verify_directly_issued_by(x509.load_pem_x509_certificate(trusted_pem))
    assert b"PRIVATE KEY" in key_pem


async def test_a_self_signed_provided_ca_is_its_own_root(root: TestCaCert) -> None:
    manager = await manager_with(secret("ca-cert", root.cert_pem), secret("ca-key", root.key_pem))
    await manager.apply(provided_mesh())
    cert_pem, _, trusted_pem, _ = await MeshCA(manager.store).workload_cert("default", "web")
    assert len(x509.load_pem_x509_certificates(cert_pem)) == 1  # no intermediates to present
    assert trusted_pem == root.cert_pem


def _bad_cases(root: TestCaCert, intermediate: TestCaCert) -> dict[str, tuple[list[Resource], str, str]]:
    """name -> (Secrets, refused field, words of the reason)."""
    other = make_ca_cert("someone else")
    expired = make_ca_cert("expired CA", not_before=time.time() - 10 * DAY, valid_for=DAY)
    not_a_ca = make_ca_cert("leaf pretending", is_ca=False)
    no_sign = make_ca_cert("cannot sign", key_cert_sign=False)
    path = "mtls.backends[1].conf"
    return {
        "key does not match": (
            [secret("ca-cert", root.cert_pem), secret("ca-key", other.key_pem)],
            f"{path}.key",
            "does not match the certificate",
        ),
        "expired": (
            [secret("ca-cert", expired.cert_pem), secret("ca-key", expired.key_pem)],
            f"{path}.cert",
            "expired at",
        ),
        "not a CA": (
            [secret("ca-cert", not_a_ca.cert_pem), secret("ca-key", not_a_ca.key_pem)],
            f"{path}.cert",
            "basic constraint 'CA' must be set to 'true'",
        ),
        "no keyCertSign": (
            [secret("ca-cert", no_sign.cert_pem), secret("ca-key", no_sign.key_pem)],
            f"{path}.cert",
            "keyCertSign",
        ),
        "missing cert secret": ([secret("ca-key", root.key_pem)], f"{path}.cert", "secret 'ca-cert' not found"),
        "missing key secret": ([secret("ca-cert", root.cert_pem)], f"{path}.key", "secret 'ca-key' not found"),
        "chain cut short": (
            [secret("ca-cert", intermediate.cert_pem), secret("ca-key", intermediate.key_pem)],
            f"{path}.cert",
            "not self-signed",
        ),
        "not PEM": (
            [secret("ca-cert", b"hello"), secret("ca-key", root.key_pem)],
            f"{path}.cert",
            "holds no PEM certificate",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "key does not match",
        "expired",
        "not a CA",
        "no keyCertSign",
        "missing cert secret",
        "missing key secret",
        "chain cut short",
        "not PEM",
    ],
)
async def test_a_provided_ca_that_cannot_work_is_refused_and_the_mesh_keeps_its_ca(
    case: str, root: TestCaCert, intermediate: TestCaCert
) -> None:
    secrets, field, reason = _bad_cases(root, intermediate)[case]
    manager = await manager_with(*secrets)
    running = provided_mesh(enabled="ca-b")
    running.spec["mtls"]["backends"] = running.spec["mtls"]["backends"][:1]
    await manager.apply(running)
    ca = MeshCA(manager.store)
    before = await ca.issue("default", "web")
    stored = await manager.store.get("Mesh", "default")
    with pytest.raises(ValidationError) as exc:
        await manager.apply(provided_mesh())
    assert reason in refusal(exc)[field], refusal(exc)
    assert (await manager.store.get("Mesh", "default")).version == stored.version  # nothing written
    assert (await ca.issue("default", "web")).ca_fingerprint == before.ca_fingerprint  # the mesh is untouched


async def test_a_key_written_in_the_mesh_or_a_file_path_is_refused(root: TestCaCert) -> None:
    manager = await manager_with(secret("ca-cert", root.cert_pem))
    mesh = provided_mesh()
    backend: dict[str, Any] = mesh.spec["mtls"]["backends"][1]
    backend["conf"]["key"] = {"inlineString": root.key_pem.decode()}
    with pytest.raises(ValidationError) as exc:
        await manager.apply(mesh)
    assert "stored and synced in clear" in refusal(exc)["mtls.backends[1].conf.key"]
    backend["conf"]["key"] = {"file": "/etc/ca.key"}
    with pytest.raises(ValidationError) as exc:
        await manager.apply(mesh)
    assert "not supported for a mesh CA" in refusal(exc)["mtls.backends[1].conf.key.file"]


async def test_secrets_of_a_ca_in_use_can_be_neither_changed_nor_deleted(root: TestCaCert) -> None:
    manager = await manager_with(secret("ca-cert", root.cert_pem), secret("ca-key", root.key_pem))
    await manager.apply(provided_mesh())
    other = make_ca_cert("another root")
    with pytest.raises(ValidationError) as exc:
        await manager.apply(secret("ca-cert", other.cert_pem))
    assert "would swap the CA under them" in refusal(exc)["data"]
    with pytest.raises(ValidationError) as exc:
        await manager.delete("Secret", "ca-key", "default")
    assert "remove the backend from the Mesh" in refusal(exc)["name"]
    assert (await manager.store.get("Secret", "ca-cert", "default")).spec["data"] == base64.b64encode(
        root.cert_pem
    ).decode()


async def test_skip_validation_accepts_the_mesh_but_the_ca_never_issues_what_it_cannot(root: TestCaCert) -> None:
    other = make_ca_cert("someone else")
    manager = await manager_with(secret("ca-cert", root.cert_pem), secret("ca-key", other.key_pem))
    mesh = provided_mesh()
    mesh.spec["mtls"]["skipValidation"] = True
    await manager.apply(mesh)
    with pytest.raises(CaProblem, match="does not match the certificate"):
        await MeshCA(manager.store).issue("default", "web")


def test_the_material_checks_name_the_certificate_of_the_chain(root: TestCaCert) -> None:
    intermediate = make_ca_cert("mid", issuer=root, path_length=0)
    below = make_ca_cert("below", issuer=intermediate)
    with pytest.raises(CaProblem) as exc:
        load_signing_ca("ca", below.chain(intermediate, root), below.key_pem, time.time())
    assert exc.value.part == "cert[1]" and "pathlen is 0" in exc.value.reason
    with pytest.raises(CaProblem) as exc:
        load_signing_ca("ca", below.chain(root), below.key_pem, time.time())
    assert exc.value.part == "cert[0]" and "is not signed by the next certificate" in exc.value.reason
    small = ec.generate_private_key(ec.SECP521R1())
    from zonemesh.shared.certs import private_key_pem

    with pytest.raises(CaProblem) as exc:
        load_signing_ca("ca", root.cert_pem, private_key_pem(small), time.time())
    assert exc.value.part == "key" and "secp521r1" in exc.value.reason


async def test_the_certificate_may_be_written_in_the_mesh_the_key_never(root: TestCaCert) -> None:
    manager = await manager_with(secret("ca-key", root.key_pem))
    mesh = provided_mesh()
    mesh.spec["mtls"]["backends"][1]["conf"]["cert"] = {"inlineString": root.cert_pem.decode()}
    await manager.apply(mesh)
    _, _, trusted_pem, _ = await MeshCA(manager.store).workload_cert("default", "web")
    assert trusted_pem == root.cert_pem
