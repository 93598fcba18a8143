"""The systemd units of docs/deployment.md (docs/examples/systemd/) must run as written: their
ExecStart lines go through the real argparse parsers of zonemesh-cp / zonemesh-dp and the same
checks the programs make before they start (configuration rules, Dataplane documents), so a
renamed flag or a changed rule fails here instead of on someone's VM."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from zonemesh.shared import config as cfg

from zonemesh.cp import build_parser as cp_parser
from zonemesh.dp.agent import AgentOptions, load_dataplane, parse_cp_address
from zonemesh.dp.main import build_parser as dp_parser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "systemd"
UNITS = sorted(EXAMPLES.glob("*.service"))
# What a template unit is instantiated with in docs/deployment.md (`zonemesh-dp@backend-1`).
INSTANCE = "backend-1"


class UnitError(Exception):
    pass


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}}: comments, repeated keys and backslash continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        raise UnitError("the last line ends with a continuation backslash")
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        if current is None or "=" not in line:
            raise UnitError(f"not a key=value line in a section: {line!r}")
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def expand(value: str, instance: str) -> str:
    """The systemd specifiers the examples use: %i (instance) and %% (a literal %)."""
    return value.replace("%%", "\0").replace("%i", instance).replace("\0", "%")


def exec_argv(unit: dict[str, dict[str, list[str]]], instance: str) -> list[str]:
    starts = unit.get("Service", {}).get("ExecStart", [])
    if len(starts) != 1:
        raise UnitError(f"expected exactly one ExecStart, found {len(starts)}")
    command = starts[0].lstrip("-@+!:")  # systemd's prefixes; none change the argv
    return shlex.split(expand(command, instance))


def unit_env(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit.get("Service", {}).get("Environment", []):
        for item in shlex.split(value):
            key, _, val = item.partition("=")
            env[key] = val
    return env


def example_file(path: str) -> Path:
    """/etc/zonemesh/.../NAME.yaml in a unit stands for docs/examples/systemd/NAME.yaml."""
    return EXAMPLES / Path(path).name


def check_unit(text: str, instance: str = INSTANCE) -> str:
    """Parse a unit and its ExecStart as the program would; return the program name or raise UnitError."""
    unit = parse_unit(text)
    for section in ("Unit", "Service", "Install"):
        if section not in unit:
            raise UnitError(f"missing [{section}]")
    argv = exec_argv(unit, instance)
    program = Path(argv[0]).name
    if program == "zonemesh-cp":
        try:
            args = cp_parser().parse_args(argv[1:])
        except SystemExit as exc:
            raise UnitError(f"zonemesh-cp refuses {argv[1:]} (exit {exc.code})") from None
        try:
            cfg.load(args, env=unit_env(unit))
        except cfg.ConfigError as exc:
            raise UnitError(f"zonemesh-cp: invalid configuration: {exc}") from None
    elif program == "zonemesh-dp":
        try:
            args = dp_parser().parse_args(argv[1:])
        except SystemExit as exc:
            raise UnitError(f"zonemesh-dp refuses {argv[1:]} (exit {exc.code})") from None
        parse_cp_address(args.cp_address)
        doc = example_file(args.dataplane_file)
        if not doc.is_file():
            raise UnitError(f"no example {doc.name} for --dataplane-file {args.dataplane_file}")
        opts = AgentOptions(
            cp_address=args.cp_address,
            name=args.name,
            mesh="" if args.proxy_type != "dataplane" else args.mesh,
            token_file=args.dataplane_token_file,
            dataplane_file=str(doc),
            proxy_type=args.proxy_type,
        )
        try:
            load_dataplane(opts)
        except Exception as exc:
            raise UnitError(f"{doc.name}: {exc}") from None
    else:
        raise UnitError(f"ExecStart runs {program}, not zonemesh-cp or zonemesh-dp")
    return program


def test_examples_exist() -> None:
    names = {u.name for u in UNITS}
    expected = {"zonemesh-global.service", "zonemesh-global-etcd.service", "zonemesh-zone.service"}
    expected |= {"zonemesh-dp@.service", "zonemesh-ingress.service", "zonemesh-egress.service"}
    assert expected <= names, f"missing: {expected - names}"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_runs_a_command_the_programs_accept(path: Path) -> None:
    check_unit(path.read_text())


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_shown_in_the_deployment_guide(path: Path) -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    assert f"examples/systemd/{path.name}" in text


def test_global_units_use_the_stores_they_say() -> None:
    sqlite = parse_unit((EXAMPLES / "zonemesh-global.service").read_text())
    etcd = parse_unit((EXAMPLES / "zonemesh-global-etcd.service").read_text())
    for unit, store in ((sqlite, "sqlite"), (etcd, "etcd")):
        config = cfg.load(cp_parser().parse_args(exec_argv(unit, INSTANCE)[1:]), env=unit_env(unit))
        assert (config.mode, config.store) == ("global", store)
    zone = parse_unit((EXAMPLES / "zonemesh-zone.service").read_text())
    config = cfg.load(cp_parser().parse_args(exec_argv(zone, INSTANCE)[1:]), env=unit_env(zone))
    assert config.mode == "zone" and config.global_address.startswith("grpcs://") and config.global_ca_file


def test_proxy_units_keep_envoy_admin_on_its_private_socket() -> None:
    """No example opens Envoy's admin API on TCP (every local user could read the proxy's token
    there); the work dir holding its socket is the unit's own 0700 runtime directory; each proxy
    unit has its own readiness port, for health checks."""
    readiness = []
    for path in UNITS:
        unit = parse_unit(path.read_text())
        argv = exec_argv(unit, INSTANCE)
        if Path(argv[0]).name != "zonemesh-dp":
            continue
        args = dp_parser().parse_args(argv[1:])
        assert args.admin_port is None, path.name
        runtime = unit["Service"]["RuntimeDirectory"][0].replace("%i", INSTANCE)
        assert args.work_dir == f"/run/{runtime}", path.name
        assert unit["Service"]["RuntimeDirectoryMode"] == ["0700"], path.name
        readiness.append(args.readiness_port)
    assert len(readiness) == 3 and len(set(readiness)) == 3 and 0 not in readiness, readiness


# -- the checker itself must be able to fail ------------------------------------------------------

GOOD = (EXAMPLES / "zonemesh-zone.service").read_text()


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (("--zone-token-file", "--zone-token-path"), "zonemesh-cp refuses"),  # a renamed flag
        (("grpcs://global", "http://global"), "global_address must be grpcs://"),  # a rule of the config
        (("--zone zone-1 ", ""), "zone mode needs a zone name"),
        (("[Install]", "[Instal]"), "missing [Install]"),
    ],
)
def test_checker_refuses_a_drifted_unit(mutation: tuple[str, str], message: str) -> None:
    old, new = mutation
    assert old in GOOD
    with pytest.raises(UnitError, match=re.escape(message)):
        check_unit(GOOD.replace(old, new))


def test_checker_refuses_a_bad_sidecar() -> None:
    text = (EXAMPLES / "zonemesh-dp@.service").read_text()
    with pytest.raises(UnitError, match="zonemesh-dp refuses"):
        check_unit(text.replace("--dataplane-token-file", "--token-file"))
    with pytest.raises(UnitError, match="no example"):
        check_unit(text, instance="frontend-9")
    with pytest.raises(UnitError, match="not a valid ZoneIngress"):
        # A sidecar's document given to the ingress unit (the names agree, so the kind is what is wrong).
        unit = (EXAMPLES / "zonemesh-ingress.service").read_text()
        bad = unit.replace("ingress.yaml", "backend-1.yaml").replace("--name ingress-1", "--name backend-1")
        check_unit(bad)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_every_directive(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys and unparsable values are warnings on stderr, so any output fails.
    The executables are pointed at this venv's, since verify checks that they exist."""
    bindir = str(Path(sys.executable).parent) + "/"
    for path in UNITS:
        name = path.name.replace("@.service", f"@{INSTANCE}.service")
        target = tmp_path / name
        target.write_text(path.read_text().replace("/opt/zonemesh/bin/", bindir))
        proc = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(target)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0 and not proc.stderr.strip(), f"{path.name}: {proc.stderr}"
