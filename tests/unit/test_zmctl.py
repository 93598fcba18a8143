"""zmctl without a control plane: argument parsing, formatting, the config file, local
validation and exit codes. (Against a real control plane: tests/integration/test_zmctl_cli.py.)"""

from __future__ import annotations

import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from zonemesh.shared.resources import REGISTRY

from zonemesh.ctl import config as cfg
from zonemesh.ctl import inspect, output
from zonemesh.ctl.client import ApiClient, ApiError, ConnectionFailed, next_offset, quote_name
from zonemesh.ctl.commands import DATAPLANE_INSPECT_TYPES, expand_documents, parse_vars, substitute_vars
from zonemesh.ctl.errors import UsageError
from zonemesh.ctl.main import build_parser, main

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)

VALID_TIMEOUT = """\
type: MeshTimeout
name: t1
mesh: default
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 3s}
"""

INVALID_DOCS = """\
type: MeshTimeout
name: ok
mesh: default
spec:
  targetRef: {kind: Mesh}
  to: [{targetRef: {kind: Mesh}, default: {connectionTimeout: 3s}}]
---
type: MeshTimeout
name: bad
mesh: default
spec:
  bogus: 1
  to:
  - default: {connectionTimeout: 5}
---
type: Mesh
name: m2
mtls: {enabledBackend: nope}
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(autouse=True)
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and ZMCTL_CONFIG: never the developer's real config."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "zmctl" / "config.yaml"
    monkeypatch.setenv(cfg.CONFIG_ENV, str(path))
    return path


@pytest.fixture
def nowhere() -> list[str]:
    """Global options pointing at a closed port: a test that must send nothing uses them,
    and a request that did go out would fail with 'connection refused' instead."""
    return ["--cp-address", f"http://127.0.0.1:{closed_port()}"]


# -- argument parsing ----------------------------------------------------------------------


def test_global_options_before_or_after_the_subcommand() -> None:
    parser = build_parser()
    before = parser.parse_args(["--cp-address", "http://h:1", "get", "meshes"])
    after = parser.parse_args(["get", "meshes", "--cp-address", "http://h:1", "--timeout", "2.5"])
    assert before.cp_address == after.cp_address == "http://h:1"
    assert after.timeout == 2.5
    assert not hasattr(parser.parse_args(["get", "meshes"]), "cp_address")


def test_get_arguments() -> None:
    args = build_parser().parse_args(["get", "mt", "x", "-m", "demo", "-o", "yaml", "--size", "5", "--offset", "a"])
    assert (args.type, args.name, args.mesh, args.output, args.size, args.offset) == ("mt", "x", "demo", "yaml", 5, "a")
    defaults = build_parser().parse_args(["get", "meshes"])
    assert (defaults.name, defaults.mesh, defaults.output) == (None, None, "table")


@pytest.mark.parametrize(("kind", "path"), [("config-dump", "_config"), ("rules", "_rules"), ("policies", "_policies")])
def test_inspect_dataplane_types(kind: str, path: str) -> None:
    args = build_parser().parse_args(["inspect", "dataplane", "dp-1", "--type", kind, "-m", "demo"])
    assert (args.name, args.type, args.mesh) == ("dp-1", kind, "demo")
    assert DATAPLANE_INSPECT_TYPES[kind] == path


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["get"],
        ["get", "meshes", "-o", "xml"],
        ["get", "meshes", "--size", "0"],
        ["apply"],
        ["delete", "meshtimeouts"],
        ["config"],
        ["config", "control-planes", "add", "--name", "x"],
        ["inspect", "dataplane", "dp-1", "--type", "nope"],
        ["--timeout", "-1", "get", "meshes"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: zmctl" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "meshtimeouts", "../x"],
        ["get", "meshtimeouts", "--mesh", "a/b"],
        ["get", "meshtimeouts", "--mesh", "team.a"],  # a mesh name holds no dot
        ["delete", "meshtimeouts", "a?b"],
        ["delete", "meshtimeouts", "x", "--mesh", "a/b"],
        ["inspect", "dataplane", "Web 1"],
        ["inspect", "dataplanes", "--mesh", "x?y"],
        ["generate", "dataplane-token", "--mesh", "Bad Mesh", "--valid-for", "1h"],
        ["generate", "dataplane-token", "--name", "web_1", "--valid-for", "1h"],
        ["generate", "zone-token", "--zone", "zone.1", "--valid-for", "1h"],
    ],
)
def test_names_the_control_plane_would_refuse_are_usage_errors(
    argv: list[str], nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The name rule of the API applies on the command line: a '/' or '?' in a name or mesh
    would otherwise change the URL zmctl builds (the mesh is not percent-encoded)."""
    assert main([*argv, *nowhere]) == 2
    err = capsys.readouterr().err
    assert "invalid name" in err and "lower case alphanumeric" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "apply" in capsys.readouterr().out
    assert main(["get", "--help"]) == 0
    help_text = capsys.readouterr().out
    # The list of types comes from the registry.
    assert all(t.plural in help_text for t in REGISTRY)


def test_unknown_type_is_a_usage_error(nowhere: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "meshtimeoutz", *nowhere]) == 2
    err = capsys.readouterr().err
    assert "unknown resource type 'meshtimeoutz'" in err and "MeshTimeout" in err
    assert "zmctl get --help" in err
    assert "Traceback" not in err


# -- formatting ----------------------------------------------------------------------------


def test_render_table_aligns_columns() -> None:
    text = output.render_table(["NAME", "AGE"], [["a-long-name", "1s"], ["b", "10m"]])
    assert text.splitlines() == ["NAME          AGE", "a-long-name   1s", "b             10m"]


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(seconds=5), "5s"),
        (timedelta(seconds=119), "119s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=3), "3h"),
        (timedelta(days=3), "3d"),
        (timedelta(days=800), "2y"),
        (timedelta(seconds=-30), "0s"),  # a CP clock slightly ahead must not give a negative age
    ],
)
def test_format_age(delta: timedelta, expected: str) -> None:
    created = (NOW - delta).isoformat().replace("+00:00", "Z")
    assert output.format_age(created, NOW) == expected


def test_format_age_without_a_time() -> None:
    assert output.format_age(None, NOW) == output.format_age("garbage", NOW) == "-"


def test_describe() -> None:
    assert output.describe("MeshTimeout", "x", "default") == 'MeshTimeout "x" in mesh "default"'
    assert output.describe("Zone", "zone-1") == 'Zone "zone-1"'


def test_format_target_ref() -> None:
    assert output.format_target_ref({"kind": "Mesh"}) == "Mesh"
    assert output.format_target_ref({"kind": "MeshService", "name": "backend"}) == "MeshService/backend"
    assert output.format_target_ref({"kind": "MeshSubset", "tags": {"b": "2", "a": "1"}}) == "MeshSubset a=1 b=2"
    assert output.format_target_ref({"kind": "Mesh", "proxyTypes": ["Sidecar"]}) == "Mesh proxyTypes=Sidecar"
    assert output.format_target_ref(None) == "-"


def test_table_columns_follow_the_registry() -> None:
    def headers(type_name: str) -> list[str]:
        return [c.header for c in output.columns_for(REGISTRY.get(type_name))]

    assert headers("MeshTimeout") == ["MESH", "NAME", "TARGETREF", "AGE"]
    assert headers("Dataplane") == ["MESH", "NAME", "TAGS", "ADDRESS", "KIND", "AGE"]
    assert headers("MeshGateway") == ["MESH", "NAME", "LISTENERS", "AGE"]
    assert headers("Zone") == ["NAME", "ENABLED", "STATUS", "AGE"]
    assert headers("Mesh") == ["NAME", "MTLS", "AGE"]
    assert headers("GlobalSecret") == ["NAME", "AGE"]
    # Every policy gets TARGETREF, without a list of policy names in zmctl.
    assert all("TARGETREF" in headers(p.name) for p in REGISTRY.policies())


def test_dataplane_table() -> None:
    dp = {
        "type": "Dataplane",
        "mesh": "default",
        "name": "backend-1",
        "creationTime": "2026-01-10T11:59:00Z",
        "networking": {
            "address": "10.0.0.1",
            "inbound": [
                {"port": 80, "tags": {"kuma.io/service": "backend", "version": "v1"}},
                {"port": 81, "tags": {"kuma.io/service": "backend-admin", "version": "v1"}},
            ],
        },
    }
    ctx = output.TableContext(now=NOW)
    lines = output.resource_table(REGISTRY.get("Dataplane"), [dp], ctx).splitlines()
    assert lines[0].split() == ["MESH", "NAME", "TAGS", "ADDRESS", "KIND", "AGE"]
    assert "kuma.io/service=backend,backend-admin version=v1" in lines[1]
    assert lines[1].split()[-3:] == ["10.0.0.1", "sidecar", "60s"]


def test_gateways_are_marked_in_the_dataplane_table() -> None:
    def gateway(name: str, kind: str) -> dict[str, object]:
        return {
            "mesh": "default",
            "name": name,
            "networking": {"address": "127.0.0.1", "gateway": {"type": kind, "tags": {"kuma.io/service": name}}},
        }

    docs = [gateway("edge", "BUILTIN"), gateway("kong", "DELEGATED")]
    rows = output.resource_table(REGISTRY.get("Dataplane"), docs, output.TableContext(now=NOW)).splitlines()[1:]
    assert [r.split()[4] for r in rows] == ["gateway:builtin", "gateway:delegated"]
    listeners = {
        "conf": {"listeners": [{"port": 8080, "protocol": "HTTP", "hostname": "a.com"}, {"port": 1, "protocol": "TCP"}]}
    }
    assert output.gateway_listeners(listeners) == "HTTP:8080/a.com TCP:1"


def test_zone_table_shows_online_status_when_insights_are_known() -> None:
    zones: list[dict[str, object]] = [
        {"type": "Zone", "name": "z1"},
        {"type": "Zone", "name": "z2", "enabled": False},
        {"name": "z3"},
    ]
    insights = {
        "z1": {"subscriptions": [{"connectTime": "2026-01-10T10:00:00Z"}]},
        "z2": {"subscriptions": [{"connectTime": "t0", "disconnectTime": "t1"}]},
    }
    # z3 has no insight although the CP keeps them: it never connected, so it is offline.
    rows = output.resource_table(REGISTRY.get("Zone"), zones, output.TableContext(NOW, insights)).splitlines()[1:]
    assert [r.split()[:3] for r in rows] == [
        ["z1", "true", "Online"],
        ["z2", "false", "Offline"],
        ["z3", "true", "Offline"],
    ]
    unknown = output.resource_table(REGISTRY.get("Zone"), zones[:1], output.TableContext(NOW)).splitlines()[1]
    assert unknown.split()[:3] == ["z1", "true", "-"]


def test_zone_table_prefers_the_state_global_reports() -> None:
    """A zone that vanished without closing its stream still has an open subscription; global's
    heartbeat-based state from /zones+insights says Offline, and that is what is shown."""
    insights = {"z1": {"subscriptions": [{"connectTime": "t0"}], "state": "Offline"}}
    row = output.resource_table(REGISTRY.get("Zone"), [{"name": "z1"}], output.TableContext(NOW, insights))
    assert row.splitlines()[1].split()[:3] == ["z1", "true", "Offline"]


def test_mesh_mtls() -> None:
    assert output.mesh_mtls({"name": "m"}) == "off"
    mesh = {"mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
    assert output.mesh_mtls(mesh) == "builtin/ca-1"


def test_dataplane_overview_accepts_both_list_shapes() -> None:
    flat = {"type": "Dataplane", "mesh": "m", "name": "dp", "networking": {"address": "1.2.3.4"}}
    assert output.dataplane_overview(flat) == (flat, None)
    overview = {
        "type": "DataplaneOverview",
        "mesh": "m",
        "name": "dp",
        "dataplane": {"networking": {"address": "1.2.3.4"}},
        "dataplaneInsight": {"subscriptions": [{"connectTime": "2026-01-10T10:00:00Z"}]},
    }
    # kumactl's columns: a proxy connected, but without inbounds, is Offline as Kuma counts it;
    # a plain list has no insight, so its status is unknown ("-").
    rows = [inspect.dataplane_row(i, NOW) for i in (overview, flat)]
    assert rows[0][:5] == ["m", "dp", "-", "Offline", "2h"]
    assert rows[1][:5] == ["m", "dp", "-", "-", "never"]


def test_mesh_summary_table_lists_only_present_policies() -> None:
    summary = output.MeshSummary("default", "off", 3, {"MeshTimeout": 2, "MeshRetry": 0})
    lines = output.mesh_summary_table([summary]).splitlines()
    assert lines[0].split() == ["NAME", "MTLS", "DATAPLANES", "POLICIES"]
    assert lines[1].split() == ["default", "off", "3", "MeshTimeout=2"]


def test_yaml_output_round_trips_through_the_codec() -> None:
    text = output.to_yaml([{"type": "Mesh", "name": "a"}, {"type": "Mesh", "name": "b"}])
    assert text.count("---") == 1


def test_next_offset_ignores_the_host_of_the_link() -> None:
    assert next_offset("http://elsewhere:1/meshes/default/meshtimeouts?size=1&offset=1") == "1"
    assert next_offset(None) is None
    assert next_offset("http://h/x?size=1") is None


def test_quote_name_keeps_a_name_one_path_segment() -> None:
    assert quote_name("a/b c") == "a%2Fb%20c"


def test_api_error_message() -> None:
    err = ApiError(400, "Resource is not valid", "spec.x: bad", [("spec.x", "bad")])
    assert err.render() == "Resource is not valid (400)\n  spec.x: bad"
    assert ApiError(409, "Conflict", "stale").render() == "Conflict (409): stale"


# -- apply: local parts --------------------------------------------------------------------


def test_vars_are_substituted() -> None:
    assert parse_vars(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    assert substitute_vars("name: {{ A }}-{{B}}", {"A": "1", "B": "2"}) == "name: 1-2"
    with pytest.raises(UsageError, match="not given: B"):
        substitute_vars("{{ A }} {{ B }}", {"A": "1"})
    with pytest.raises(UsageError):
        parse_vars(["novalue"])


def test_expand_documents_accepts_get_json_output() -> None:
    listing = {"total": 2, "items": [{"type": "Mesh", "name": "a"}, {"type": "Mesh", "name": "b"}], "next": None}
    assert [d["name"] for d in expand_documents([listing])] == ["a", "b"]
    assert expand_documents([[{"a": 1}], {"type": "Mesh"}]) == [{"a": 1}, {"type": "Mesh"}]


def test_apply_reports_every_field_error_and_sends_nothing(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docs.yaml"
    path.write_text(INVALID_DOCS)
    assert main(["apply", "-f", str(path), *nowhere]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 document(s) not valid; nothing was applied" in err
    assert 'document 2 (MeshTimeout "bad" in mesh "default")' in err
    for field, reason in [
        ("spec.bogus", "unknown field"),
        ("spec.to[0].targetRef", "must be defined"),
        ("spec.to[0].default.connectionTimeout", "must be a duration"),
    ]:
        assert f"{field}: {reason}" in err
    assert 'document 3 (Mesh "m2")' in err and "mtls.enabledBackend" in err
    assert "document 1" not in err
    assert "connection refused" not in err  # validation failed before any request


def test_apply_refuses_types_not_supported_yet_and_sends_nothing(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "log.yaml"
    path.write_text(
        "type: MeshAccessLog\nmesh: default\nname: log\nspec:\n  targetRef: {kind: Mesh}\n"
        "  from: [{targetRef: {kind: Mesh}, default: {backends: [{file: {path: /dev/stdout}}]}}]\n"
    )
    assert main(["apply", "-f", str(path), *nowhere]) == 1
    err = capsys.readouterr().err
    assert 'document 1 (MeshAccessLog "log" in mesh "default")' in err
    assert "type: MeshAccessLog is not supported yet by zonemesh" in err
    assert "connection refused" not in err  # refused before any request


def test_apply_invalid_yaml(nowhere: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("type: Mesh\nname: [a\n")
    assert main(["apply", "-f", str(path), *nowhere]) == 1
    err = capsys.readouterr().err
    assert f"cannot parse {path}" in err and "line " in err and "invalid YAML" in err


def test_apply_missing_file_is_a_usage_error(nowhere: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apply", "-f", "/nonexistent/x.yaml", *nowhere]) == 2
    assert "cannot read /nonexistent/x.yaml" in capsys.readouterr().err


def test_apply_empty_input(tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("---\n")
    assert main(["apply", "-f", str(path), *nowhere]) == 1
    assert "contains no documents" in capsys.readouterr().err


def test_apply_dry_run_prints_the_resolved_documents(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(VALID_TIMEOUT.replace("name: t1", "name: '{{ NAME }}'"))
    assert main(["apply", "-f", str(path), "--dry-run", "--var", "NAME=from-var", *nowhere]) == 0
    out, err = capsys.readouterr()
    assert "name: from-var" in out and "connectionTimeout: 3s" in out
    assert 'Would apply MeshTimeout "from-var" in mesh "default"' in err


def test_apply_missing_var_is_a_usage_error(
    tmp_path: Path, nowhere: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(VALID_TIMEOUT.replace("name: t1", "name: '{{ NAME }}'"))
    assert main(["apply", "-f", str(path), *nowhere]) == 2
    assert "pass --var NAME=VALUE" in capsys.readouterr().err


# -- unreachable control plane -------------------------------------------------------------


def test_connection_refused_is_a_clear_error(nowhere: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["get", "meshes", *nowhere]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the control plane at {nowhere[1]}: connection refused" in err
    assert "Traceback" not in err


def test_client_times_out() -> None:
    # A listening socket that never accepts/answers: the request must end at the timeout.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        client = ApiClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.3)
        with pytest.raises(ConnectionFailed, match=r"0\.3s"):
            client.get("/")


# -- config file ---------------------------------------------------------------------------


def test_default_config_without_a_file(isolated_config: Path) -> None:
    config = cfg.load(isolated_config)
    assert config.active() == cfg.ControlPlane("local", "http://127.0.0.1:5681")
    assert not isolated_config.exists()  # reading never writes


def test_config_path_falls_back_to_home(tmp_path: Path) -> None:
    assert cfg.config_path({"HOME": str(tmp_path)}) == Path("~/.zmctl/config.yaml").expanduser()
    assert cfg.config_path({cfg.CONFIG_ENV: "/x/c.yaml"}) == Path("/x/c.yaml")


def test_config_path_uses_home_when_env_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(cfg.CONFIG_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["config", "control-planes", "add", "--name", "a", "--address", "http://127.0.0.1:1"]) == 0
    assert (tmp_path / ".zmctl" / "config.yaml").exists()


def test_add_switch_remove_round_trip(isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    add = ["config", "control-planes", "add", "--name", "prod", "--address", "https://cp.example:5681/"]
    assert main([*add, "--headers", "authorization=Bearer s3cret", "--headers", "x-a=1,x-b=2"]) == 0
    assert 'switched the active control plane to "prod"' in capsys.readouterr().out

    config = cfg.load(isolated_config)
    assert config.current == "prod"
    assert config.active().address == "https://cp.example:5681"
    assert config.active().headers == {"authorization": "Bearer s3cret", "x-a": "1", "x-b": "2"}
    assert stat.S_IMODE(isolated_config.stat().st_mode) == 0o600

    assert main(add) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([*add, "--overwrite"]) == 0
    assert cfg.load(isolated_config).active().headers == {}

    assert main(["config", "control-planes", "switch", "--name", "local"]) == 0
    assert cfg.load(isolated_config).current == "local"
    assert main(["config", "control-planes", "switch", "--name", "nope"]) == 1
    assert "no control plane named 'nope'" in capsys.readouterr().err

    assert main(["config", "control-planes", "remove", "--name", "local"]) == 0
    assert cfg.load(isolated_config).current == "prod"


def test_header_values_are_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    add = ["config", "control-planes", "add", "--name", "p", "--address", "http://127.0.0.1:1"]
    assert main([*add, "--headers", "authorization=Bearer s3cret"]) == 0
    assert main(["config", "view"]) == 0
    assert main(["config", "control-planes", "list"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "authorization: <redacted>" in out
    assert "*        p" in out


def test_configured_headers_are_used_and_cp_address_overrides(
    isolated_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zonemesh.ctl.commands import Env

    config = cfg.CtlConfig()
    config.add(cfg.ControlPlane("p", "http://10.0.0.1:5681", {"authorization": "Bearer t"}))
    cfg.save(config, isolated_config)
    client = Env(build_parser().parse_args(["get", "meshes"])).client()
    assert (client.address, client.headers) == ("http://10.0.0.1:5681", {"authorization": "Bearer t"})
    override = Env(build_parser().parse_args(["get", "meshes", "--cp-address", "http://127.0.0.1:9"])).client()
    assert (override.address, override.headers) == ("http://127.0.0.1:9", {})


@pytest.mark.parametrize("address", ["127.0.0.1:5681", "ftp://h", "http://", "http://h:notaport"])
def test_bad_addresses_are_refused(address: str) -> None:
    with pytest.raises(UsageError):
        cfg.check_address(address)


def test_bad_headers_are_refused() -> None:
    with pytest.raises(UsageError):
        cfg.parse_headers(["no-equals-sign"])


def test_malformed_config_file(isolated_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text("controlPlanes: [{name: a}]\n")
    assert main(["get", "meshes"]) == 1
    err = capsys.readouterr().err
    assert f"the zmctl config {isolated_config} is malformed" in err and "Traceback" not in err


# -- control planes with a user token (--auth-type tokens, as kumactl) ----------------------

# A syntactically valid JWT; its signature is never checked by zmctl.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJOYW1lIjoiYWxpY2UifQ.c2lnbmF0dXJlLXMzY3JldA"


def test_token_entries_are_stored_0600_sent_and_never_printed(
    isolated_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["config", "control-planes", "add", "--name", "prod", "--address", "http://10.0.0.1:5681"]
    assert main([*add, "--auth-type", "tokens", "--auth-conf", f"token={JWT}"]) == 0
    assert stat.S_IMODE(isolated_config.stat().st_mode) == 0o600
    plane = cfg.load(isolated_config).active()
    assert (plane.auth_type, plane.auth_conf) == ("tokens", {"token": JWT})

    from zonemesh.ctl.commands import Env

    client = Env(build_parser().parse_args(["get", "meshes"])).client()
    assert client.headers == {"Authorization": f"Bearer {JWT}"}
    # A one-off address never gets the token.
    assert (
        Env(build_parser().parse_args(["get", "meshes", "--cp-address", "http://127.0.0.1:9"])).client().headers == {}
    )

    capsys.readouterr()
    assert main(["config", "view"]) == 0
    assert main(["config", "control-planes", "list"]) == 0
    out = capsys.readouterr().out
    assert "c2lnbmF0dXJl" not in out and "eyJ" not in out
    assert "authType: tokens" in out and "token: <redacted>" in out
    assert "tokens" in out.splitlines()[-1]  # the list's AUTH column

    token_file = tmp_path / "alice.token"
    token_file.write_text(JWT + "\n")
    assert main([*add, "--overwrite", "--auth-type", "tokens", "--auth-conf", f"token-file={token_file}"]) == 0
    assert cfg.load(isolated_config).active().auth_conf == {"token": JWT}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--auth-conf", f"token={JWT}"], "--auth-conf needs --auth-type tokens"),
        (["--auth-type", "tokens"], "exactly one of --auth-conf token=TOKEN or --auth-conf token-file=PATH"),
        (["--auth-type", "tokens", "--auth-conf", f"token={JWT},token-file=x"], "exactly one of"),
        (["--auth-type", "tokens", "--auth-conf", f"secret={JWT}"], "(unknown: secret)"),
        (["--auth-type", "tokens", "--auth-conf", "token=s3cret-not-a-jwt"], "the token is not a JWT"),
        (["--auth-type", "tokens", "--auth-conf", "token-file=/nonexistent/t"], "cannot read /nonexistent/t"),
        (["--auth-type", "tokens", "--auth-conf", f"token={JWT}", "--headers", "Authorization=Bearer x"],
         "not both"),
        (["--auth-type", "tokens", "--auth-conf", "s3cret-without-a-name"], "invalid --auth-conf entry"),
    ],
)  # fmt: skip
def test_bad_token_entries_are_refused_without_echoing_the_token(
    extra: list[str], message: str, isolated_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add = ["config", "control-planes", "add", "--name", "prod", "--address", "http://10.0.0.1:5681"]
    assert main([*add, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "s3cret" not in err and "c2lnbmF0dXJl" not in err
    assert not isolated_config.exists()  # nothing was saved


def test_unsupported_auth_type_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    add = ["config", "control-planes", "add", "--name", "p", "--address", "http://10.0.0.1:5681"]
    assert main([*add, "--auth-type", "basic", "--auth-conf", "user=a"]) == 2
    assert "invalid choice: 'basic'" in capsys.readouterr().err


def test_a_token_entry_without_a_token_is_a_malformed_config(
    isolated_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(
        "currentControlPlane: p\ncontrolPlanes: [{name: p, address: 'http://h:1', authType: tokens, authConf: {}}]\n"
    )
    assert main(["get", "meshes"]) == 1
    assert "authType must be tokens, with authConf.token" in capsys.readouterr().err
