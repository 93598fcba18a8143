"""zonemesh-dp takes kuma-dp's flags (docs/dataplane.md, "kuma-dp compatibility"): each one either
takes effect or is refused with its reason, before anything starts. The real registrations and
Envoys run in tests/integration/test_seeds_as_written.py; here, the command line and the document."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from zonemesh.dp import main as dp_main
from zonemesh.dp.agent import EXIT_USAGE, AgentError, AgentOptions, load_dataplane, prepare

GATEWAY = """type: Dataplane
mesh: default
name: gateway-instance-1
networking:
  address: {{ address }}
  gateway:
    type: BUILTIN
    tags:
      kuma.io/service: edge-gateway
"""


@pytest.fixture(autouse=True)
def keep_log_config() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def kuma_dp(tmp_path: Path, *flags: str) -> list[str]:
    """A ``kuma-dp run`` line as Kuma's docs write it (a control plane nobody listens on)."""
    (tmp_path / "token").write_text("header.payload.signature")
    return ["run", "--cp-address=https://localhost:1/", "--dataplane-token-file", str(tmp_path / "token"), *flags]


def options(tmp_path: Path, *flags: str) -> AgentOptions:
    """What main() hands the agent for these flags (without running it)."""
    args = dp_main.build_parser().parse_args(kuma_dp(tmp_path, *flags))
    assert dp_main.refusal(args) is None
    variables: dict[str, str] = {}
    for pairs in args.dataplane_var or []:
        variables.update(pairs)
    return AgentOptions(
        cp_address=args.cp_address,
        name=args.name,
        mesh=args.mesh,
        token_file=args.dataplane_token_file,
        dataplane_file=args.dataplane_file,
        dataplane_inline=args.dataplane_inline,
        dataplane_vars=variables,
        proxy_type=args.proxy_type,
        readiness_port=0,
        work_dir=str(tmp_path / "work"),
    )


def test_seed_004_gateway_line_names_the_proxy_from_its_file(tmp_path: Path) -> None:
    """Seed 004 gives no --name: the Dataplane file names the proxy (kuma-dp reads name and mesh from it)."""
    (tmp_path / "my-gateway.yaml").write_text(GATEWAY.replace("{{ address }}", "127.0.0.1"))
    opts = options(tmp_path, "--dns-enabled=false", f"--dataplane-file={tmp_path / 'my-gateway.yaml'}")
    prepared = prepare(opts, tmp_path / "work")
    assert (prepared.name, prepared.mesh) == ("gateway-instance-1", "default")
    assert prepared.dataplane is not None
    assert prepared.dataplane["networking"]["gateway"]["type"] == "BUILTIN"


def test_seed_002_name_and_mesh_without_a_document_run_the_stored_dataplane(tmp_path: Path) -> None:
    opts = options(tmp_path, "--name=backend-1", "--mesh=default")
    prepared = prepare(opts, tmp_path / "work")
    assert (prepared.name, prepared.mesh, prepared.dataplane) == ("backend-1", "default", None)
    # --mesh left out: Kuma's default mesh
    assert prepare(options(tmp_path, "--name=backend-1"), tmp_path / "work").mesh == "default"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give the proxy's Dataplane document (--dataplane-file), or --name (and --mesh)"),
        (["--proxy-type=ingress", "--name=ingress-1"], "--proxy-type ingress needs its ZoneIngress document"),
        (["--dataplane-inline", "networking: {address: 127.0.0.1}"], "does not name the proxy"),
        (
            ["--name=other", "--dataplane-inline", "name: backend-1\nnetworking: {address: 127.0.0.1}"],
            "--name other and the name in --dataplane-inline (backend-1) differ",
        ),
        (
            ["--mesh=other", "--dataplane-inline", "name: b\nmesh: default\nnetworking: {address: 1.2.3.4}"],
            "--mesh other and the mesh in --dataplane-inline (default) differ",
        ),
    ],
)
def test_what_names_the_proxy_must_be_there_and_agree(tmp_path: Path, flags: list[str], message: str) -> None:
    with pytest.raises(AgentError) as refused:
        load_dataplane(options(tmp_path, *flags))
    assert refused.value.code == EXIT_USAGE
    assert message in str(refused.value)


def test_dataplane_vars_fill_the_template_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gw.yaml").write_text(GATEWAY)
    opts = options(tmp_path, "-d", str(tmp_path / "gw.yaml"), "-v", "address=127.0.0.2")
    doc = load_dataplane(opts)
    assert doc is not None and doc["networking"]["address"] == "127.0.0.2"
    # pflag's form: several pairs in one flag
    opts = options(tmp_path, "-d", str(tmp_path / "gw.yaml"), "--dataplane-var=address=127.0.0.3,unused=x")
    doc = load_dataplane(opts)
    assert doc is not None and doc["networking"]["address"] == "127.0.0.3"
    with pytest.raises(AgentError, match=r"uses \{\{ address \}\} but no value was given: pass --dataplane-var"):
        load_dataplane(options(tmp_path, "-d", str(tmp_path / "gw.yaml")))


def test_dataplane_file_dash_reads_standard_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(GATEWAY.replace("{{ address }}", "127.0.0.1")))
    doc = load_dataplane(options(tmp_path, "--dataplane-file", "-"))
    assert doc is not None and doc["name"] == "gateway-instance-1"


def test_kuma_dp_spellings_of_zonemesh_dp_flags(tmp_path: Path) -> None:
    args = dp_main.build_parser().parse_args(
        kuma_dp(
            tmp_path,
            "--name=a",
            "--skip-verify",
            "--binary-path=/opt/envoy",
            "--config-dir=/run/dp",
            "--drain-time=30s",
            "--dataplane=networking: {}",
            "--envoy-component-log-level=upstream:debug",
        )
    )
    assert args.tls_skip_verify is True
    assert (args.envoy_binary, args.work_dir, args.drain_time) == ("/opt/envoy", "/run/dp", 30.0)
    assert args.dataplane_inline == "networking: {}"
    assert args.envoy_component_log_level == "upstream:debug"
    assert dp_main.build_parser().parse_args(kuma_dp(tmp_path, "--drain-time", "0.5")).drain_time == 0.5


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dns-enabled"], "--dns-enabled=true: zonemesh-dp has no DNS server"),
        (["--dns-enabled=true"], "Leave the flag out, or pass --dns-enabled=false"),
        (["--dns-coredns-port=15053"], "--dns-coredns-port is not supported by zonemesh-dp: zonemesh-dp has no DNS"),
        (["--dns-enable-logging"], "--dns-enable-logging=true is not supported"),
        (["--dataplane-token=abc"], "every local user can read it (ps, /proc/<pid>/cmdline)"),
        (["--transparent-proxy"], "transparent proxying is not supported yet by zonemesh"),
        (["--transparent-proxy-config=tp.yaml"], "transparent proxying is not supported yet by zonemesh"),
        (["--bind-outbounds"], "--bind-outbounds=true is not supported"),
        (["--metrics-cert-path=/c.pem"], "no metrics listener of its own"),
        (["--log-output-path=/var/log/dp.log"], "logs to standard error only"),
        (["--log-max-size=10"], "logs to standard error only"),
    ],
)
def test_kuma_dp_flags_for_features_zonemesh_dp_lacks_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert dp_main.main(kuma_dp(tmp_path, "--name=backend-1", *flags)) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err, err


def test_dns_off_is_accepted_and_so_are_dns_settings_it_makes_moot(tmp_path: Path) -> None:
    for flags in (
        ["--dns-enabled=false"],
        ["--dns-enabled=0", "--dns-coredns-port=15053", "--dns-enable-logging"],
        ["--transparent-proxy=false", "--bind-outbounds=false"],
    ):
        args = dp_main.build_parser().parse_args(kuma_dp(tmp_path, "--name=a", *flags))
        assert dp_main.refusal(args) is None, flags


def test_a_missing_token_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dp_main.main(["run", "--cp-address=https://localhost:1", "--name=a"]) == EXIT_USAGE
    assert "pass --dataplane-token-file" in capsys.readouterr().err


def test_log_level_off_and_bad_levels(tmp_path: Path) -> None:
    assert dp_main.build_parser().parse_args(kuma_dp(tmp_path, "--log-level=off")).log_level == "off"
    with pytest.raises(SystemExit):
        dp_main.build_parser().parse_args(kuma_dp(tmp_path, "--log-level=chatty"))


def test_kuma_environment_variables_are_named_as_ignored_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """kuma-dp reads KUMA_* variables; zonemesh-dp does not, and says so at start (names only: one may
    hold a token)."""
    monkeypatch.setenv("KUMA_CONTROL_PLANE_URL", "https://cp:5678")
    monkeypatch.setenv("KUMA_DATAPLANE_RUNTIME_TOKEN", "secret-token-value")
    # An invalid document stops the agent right after its start-up checks.
    assert dp_main.main(kuma_dp(tmp_path, "--dataplane-inline", "networking: [unclosed")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "kuma_environment_ignored" in err
    assert "KUMA_CONTROL_PLANE_URL" in err and "KUMA_DATAPLANE_RUNTIME_TOKEN" in err
    assert "secret-token-value" not in err and "https://cp:5678" not in err
