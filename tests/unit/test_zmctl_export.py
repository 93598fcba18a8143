"""`zmctl export`'s choices without a control plane: the types per profile (from the registry), the
order apply needs, what a document loses on export, and the inline keys it refuses.
(Export, then apply on a fresh control plane: tests/integration/test_zmctl_kumactl.py.)"""

from __future__ import annotations

import pytest
from zonemesh.shared.resources import REGISTRY

from zonemesh.ctl import export


def names(profile: str, include_admin: bool = False) -> list[str]:
    return [t.name for t in export.exported_types(profile, include_admin)]


def test_profiles_choose_types_from_the_registry() -> None:
    everything = names("all", include_admin=True)
    assert everything[:2] == ["Mesh", "Secret"] and everything[-1] == "GlobalSecret"
    assert not any(REGISTRY.get(n).system for n in everything)  # apply could not write them
    assert {t.name for t in REGISTRY.policies()} <= set(everything)
    assert "Secret" not in names("all") and "GlobalSecret" not in names("no-dataplanes")
    assert "Dataplane" in names("all") and "Dataplane" not in names("no-dataplanes")
    federation = names("federation")
    assert "Secret" in federation  # needed by a migration, as kumactl
    assert all(REGISTRY.get(n).synced_down and not REGISTRY.get(n).policy for n in federation)
    assert {t.name for t in REGISTRY.policies()} <= set(names("federation-with-policies"))


def test_a_document_loses_what_the_control_plane_writes() -> None:
    doc = {"type": "Mesh", "name": "m", "version": 3, "creationTime": "x", "modificationTime": "y", "mtls": {}}
    assert export.cleaned(doc, "all") == {"type": "Mesh", "name": "m", "mtls": {}, "skipCreatingInitialPolicies": ["*"]}
    labelled = {"type": "MeshTimeout", "name": "t", "labels": {"zonemesh.io/origin": "zone", "team": "a"}}
    assert export.cleaned(labelled, "federation")["labels"] == {"team": "a"}
    assert export.cleaned(labelled, "all")["labels"] == labelled["labels"]
    assert "labels" not in export.cleaned({"type": "X", "labels": {"kuma.io/origin": "zone"}}, "federation")


def test_inline_key_markers_are_found_by_field() -> None:
    doc = {
        "conf": {
            "listeners": [
                {"tls": {"certificates": [{"secret": "s"}, {"inlineString": "<redacted sha256:0123456789abcdef>"}]}}
            ]
        }
    }
    assert list(export.inline_keys(doc)) == ["conf.listeners[0].tls.certificates[1]"]
    assert list(export.inline_keys({"data": "not a marker"})) == []


@pytest.mark.parametrize("argv", [["export", "--profile", "everything"], ["export", "--bogus"]])
def test_bad_export_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from zonemesh.ctl.main import main

    assert main(argv) == 2


@pytest.mark.parametrize(
    ("labels", "zones"),
    [
        ({"zonemesh.io/origin": "zone", "zonemesh.io/zone": "zone-1"}, True),
        ({"kuma.io/origin": "zone", "kuma.io/zone": "zone-1"}, True),
        ({"zonemesh.io/origin": "global"}, False),
        ({}, False),
        (None, False),
    ],
)
def test_what_a_zone_synced_up_is_recognised_by_either_label_set(labels: object, zones: bool) -> None:
    doc = {"type": "MeshTimeout", "mesh": "default", "name": "t-1a2b3c", "labels": labels}
    assert export.from_a_zone(doc) is zones
