"""Control plane configuration: defaults < YAML file < ZONEMESH_* environment < flags.

Every setting is one field of `Config`; the YAML keys, the environment variable names
(``ZONEMESH_<FIELD>``) and the command-line flags (``--field-name``) are all derived from
it, so a new setting is added in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from zonemesh.shared.duration import parse_duration

MODES = ("standalone", "global", "zone")
STORES = ("sqlite", "etcd", "memory")
ETCD_COMPACTION_DEFAULT = "5m"  # kube-apiserver's --etcd-compaction-interval

# Names the seeds (Kuma / Kong Mesh) use, honoured as aliases of ours.
ENV_ALIASES = {
    "KUMA_DEFAULTS_SKIP_MESH_CREATION": "defaults_skip_mesh_creation",
    "KMESH_LICENSE_PATH": "license_path",
    "KMESH_LICENSE_INLINE": "license_inline",
    "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN": "api_localhost_is_admin",
    "KUMA_API_SERVER_GUI_ENABLED": "api_gui_enabled",
    "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE": "global_ca_file",
    "KUMA_MULTIZONE_ZONE_KDS_TLS_SKIP_VERIFY": "global_tls_skip_verify",
}


class ConfigError(Exception):
    pass


@dataclass
class Config:
    mode: str = field(default="standalone", metadata={"help": "standalone | global | zone"})
    zone: str = field(default="", metadata={"help": "zone name (zone mode)"})
    store: str = field(default="sqlite", metadata={"help": "sqlite | etcd | memory"})
    data_dir: str = field(
        default="", metadata={"help": "where SQLite and generated files live (default ~/.zonemesh/<mode>)"}
    )
    store_path: str = field(default="", metadata={"help": "SQLite file (default <data-dir>/zonemesh.db)"})
    etcd_endpoints: str = field(default="127.0.0.1:2379", metadata={"help": "host:port[,host:port]"})
    etcd_prefix: str = field(default="/zonemesh", metadata={"help": "key prefix in etcd"})
    # A protected etcd, see docs/configuration.md#etcd: TLS with etcd's CA (and a client
    # certificate for --client-cert-auth), and/or a user of etcd's auth.
    etcd_ca_file: str = field(default="", metadata={"help": "CA of etcd's server certificate (PEM): TLS to etcd"})
    etcd_cert_file: str = field(
        default="", metadata={"help": "client certificate for etcd (PEM; with --etcd-key-file and --etcd-ca-file)"}
    )
    etcd_key_file: str = field(default="", metadata={"help": "private key of --etcd-cert-file (PEM)"})
    etcd_username: str = field(default="", metadata={"help": "etcd user (etcd auth; with a password)"})
    etcd_password: str = field(
        default="",
        metadata={"help": "the etcd user's password (env or YAML only, never a flag)", "secret": True},
    )
    etcd_password_file: str = field(default="", metadata={"help": "file holding the etcd user's password"})
    api_address: str = field(default="0.0.0.0", metadata={"help": "HTTP API bind address"})
    api_port: int = field(default=5681, metadata={"help": "HTTP API port"})
    api_localhost_is_admin: bool = field(
        default=True,
        metadata={
            "help": "a direct loopback API client without a token is the admin (Kuma's localhostIsAdmin); "
            "turn it off in production and use user tokens (docs/api.md)"
        },
    )
    api_gui_enabled: bool = field(
        default=True,
        metadata={
            "help": "serve the web GUI at /gui on the API port (docs/gui.md); it uses the API with the "
            "caller's own rights, so turning it off removes pages, not access"
        },
    )
    diagnostics_address: str = field(default="0.0.0.0", metadata={"help": "metrics/health bind address"})
    diagnostics_port: int = field(default=5680, metadata={"help": "metrics/health port"})
    xds_address: str = field(default="0.0.0.0", metadata={"help": "xDS (ADS) gRPC bind address (zone)"})
    xds_port: int = field(default=5678, metadata={"help": "xDS (ADS) gRPC port, TLS (zone)"})
    xds_tls_cert_file: str = field(
        default="", metadata={"help": "xDS server certificate (default: self-signed, <data-dir>/xds.crt)"}
    )
    xds_tls_key_file: str = field(default="", metadata={"help": "xDS server key (with --xds-tls-cert-file)"})
    auth_timeout: str = field(
        default="10s",
        metadata={
            "help": "time a client has to finish its TLS handshake on the xDS port (zone) or the KDS port "
            "(global), and an xDS client to send its first request (its node and token are checked then), "
            "before it is dropped"
        },
    )
    xds_max_unauthenticated_streams: int = field(
        default=1000,
        metadata={
            "help": "xDS streams and calls still silent after 0.1 s that may wait for their first request at "
            "once; more are refused with RESOURCE_EXHAUSTED (zone)"
        },
    )
    log_format: str = field(default="json", metadata={"help": "json | console"})
    log_level: str = field(default="info", metadata={"help": "debug | info | warning | error"})
    defaults_skip_mesh_creation: bool = field(default=False, metadata={"help": "do not create the default mesh"})
    # KDS (global <-> zone sync), see docs/kds.md
    kds_address: str = field(default="0.0.0.0", metadata={"help": "KDS gRPC bind address (global)"})
    kds_port: int = field(default=5685, metadata={"help": "KDS gRPC port, TLS (global)"})
    kds_tls_cert_file: str = field(
        default="", metadata={"help": "KDS server certificate (global; default: self-signed in the data dir)"}
    )
    kds_tls_key_file: str = field(default="", metadata={"help": "KDS server private key (global)"})
    global_address: str = field(
        default="",
        metadata={
            "help": "grpcs://HOST:5685 of the global CP (zone; empty: not federated); several global replicas "
            "comma-separated, grpcs://A:5685,grpcs://B:5685: the zone moves to another when its own dies"
        },
    )
    zone_token_file: str = field(default="", metadata={"help": "zone token file (zone, with --global-address)"})
    global_ca_file: str = field(
        default="",
        metadata={
            "help": "CA that signed global's KDS certificate, e.g. global's <data-dir>/kds-tls.crt "
            "(zone; empty: verify against the system CA bundle)"
        },
    )
    global_tls_skip_verify: bool = field(
        default=False,
        metadata={
            "help": "zone: connect to global WITHOUT verifying its KDS certificate. Anyone on the path to "
            "global then receives the zone token and can impersonate global (push any policy, Secret or "
            "license to this zone). For throwaway labs only; give --global-ca-file instead"
        },
    )
    kds_heartbeat_interval: str = field(default="1s", metadata={"help": "KDS heartbeat interval (global)"})
    kds_zone_offline_timeout: str = field(
        default="3s", metadata={"help": "silence after which a KDS stream is dropped and the zone is offline"}
    )
    kds_debounce: str = field(default="10ms", metadata={"help": "coalesce bursts of changes before pushing"})
    # License (global only; zones receive it over KDS), see docs/license.md
    license_path: str = field(default="", metadata={"help": "license file (global; none: the demo license)"})
    license_inline: str = field(default="", metadata={"help": "license file contents (global; instead of a path)"})
    license_trusted_keys: str = field(
        default="", metadata={"help": "extra license issuer public keys: comma-separated Ed25519 PEM files (global)"}
    )
    license_quota_wait: str = field(
        default="5s", metadata={"help": "how long a joining proxy waits for a quota grant in strict mode (zone)"}
    )
    # Replicas on one etcd (docs/ha.md): the leader's lease. A leader that cannot renew it for half
    # of it stops its leader-only work; another replica leads once it expires.
    leader_lease_ttl: str = field(
        default="3s",
        metadata={
            "help": "etcd lease of a replica (whole seconds, 2s to 60s): when a leader dies, another replica "
            "takes over within about this time (store etcd; SQLite and memory have one process, always leader)"
        },
    )

    # etcd keeps every revision until compacted, and does not compact by itself: without this its
    # database reaches its quota and it refuses every write (shared/store/etcd_compaction.py).
    etcd_compaction_interval: str = field(
        default=ETCD_COMPACTION_DEFAULT,
        metadata={
            "help": "etcd: the leader compacts etcd's history every this long, keeping one interval of it "
            "(0s: never, when etcd runs with its own --auto-compaction-*); at least 1s"
        },
    )

    def validate(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if self.mode == "zone" and not self.zone:
            problems.append("zone mode needs a zone name: --zone NAME")
        if self.store not in STORES:
            problems.append(f"store must be one of {', '.join(STORES)} (got {self.store!r})")
        for name in ("api_port", "diagnostics_port", "xds_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"{name} must be a port number")
        if bool(self.xds_tls_cert_file) != bool(self.xds_tls_key_file):
            problems.append("xds_tls_cert_file and xds_tls_key_file go together: give both or neither")
        if self.log_format not in ("json", "console"):
            problems.append("log_format must be json or console")
        if not 0 <= self.kds_port <= 65535:
            problems.append("kds_port must be a port number")
        if bool(self.kds_tls_cert_file) != bool(self.kds_tls_key_file):
            problems.append("kds_tls_cert_file and kds_tls_key_file go together: give both or neither")
        problems += self._etcd_problems()
        if self.license_path and self.license_inline:
            problems.append("give the license as a path or inline, not both (license_path, license_inline)")
        for name in ("kds_heartbeat_interval", "kds_zone_offline_timeout", "kds_debounce", "license_quota_wait"):
            try:
                parse_duration(getattr(self, name))
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        try:
            ttl = parse_duration(self.leader_lease_ttl)
            if ttl != int(ttl) or not 2 <= ttl <= 60:
                problems.append(f"leader_lease_ttl must be whole seconds from 2s to 60s (got {self.leader_lease_ttl})")
        except ValueError as exc:
            problems.append(f"leader_lease_ttl: {exc}")
        try:
            interval = parse_duration(self.etcd_compaction_interval)
            if interval != 0 and interval < 1:
                problems.append(
                    f"etcd_compaction_interval must be 0s (off) or at least 1s (got {self.etcd_compaction_interval})"
                )
            if self.store != "etcd" and self.etcd_compaction_interval != ETCD_COMPACTION_DEFAULT:
                problems.append(f"etcd_compaction_interval: only with store etcd (store is {self.store})")
        except ValueError as exc:
            problems.append(f"etcd_compaction_interval: {exc}")
        try:
            if parse_duration(self.auth_timeout) <= 0:
                problems.append("auth_timeout must be positive, e.g. 10s")
        except ValueError as exc:
            problems.append(f"auth_timeout: {exc}")
        if self.xds_max_unauthenticated_streams < 1:
            problems.append("xds_max_unauthenticated_streams must be at least 1")
        if self.mode == "zone" and self.global_address:
            addresses = [item.strip() for item in self.global_address.split(",")]
            if not all(item.startswith("grpcs://") and len(item) > len("grpcs://") for item in addresses):
                problems.append(
                    "global_address must be grpcs://HOST:PORT, or several comma-separated (KDS always uses TLS)"
                )
            if not self.zone_token_file:
                problems.append("a federated zone needs --zone-token-file (zmctl generate zone-token on global)")
        if self.global_tls_skip_verify:
            if self.global_ca_file:
                problems.append("give global_ca_file (verify) or global_tls_skip_verify (do not), not both")
            if not (self.mode == "zone" and self.global_address):
                problems.append("global_tls_skip_verify applies to a federated zone (mode zone with global_address)")
        if problems:
            raise ConfigError("; ".join(problems))

    def _etcd_problems(self) -> list[str]:
        problems = []
        security = (
            "etcd_ca_file",
            "etcd_cert_file",
            "etcd_key_file",
            "etcd_username",
            "etcd_password",
            "etcd_password_file",
        )
        given = [name for name in security if getattr(self, name)]
        if given and self.store != "etcd":
            problems.append(f"{', '.join(given)}: only with store etcd (store is {self.store})")
        if bool(self.etcd_cert_file) != bool(self.etcd_key_file):
            problems.append("etcd_cert_file and etcd_key_file go together: give both or neither")
        if self.etcd_cert_file and not self.etcd_ca_file:
            problems.append("etcd_cert_file needs etcd_ca_file: the CA of etcd's server certificate")
        if self.etcd_ca_file and "," in self.etcd_endpoints:
            problems.append(
                "etcd over TLS takes one endpoint: give one DNS name that resolves to every member "
                "and that every member's certificate holds (etcd_endpoints)"
            )
        if self.etcd_password and self.etcd_password_file:
            problems.append("give the etcd password inline or as a file, not both (etcd_password, etcd_password_file)")
        if bool(self.etcd_username) != bool(self.etcd_password or self.etcd_password_file):
            problems.append("etcd_username and a password (etcd_password or etcd_password_file) go together")
        return problems

    @property
    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        suffix = f"zone-{self.zone}" if self.mode == "zone" else self.mode
        return Path("~/.zonemesh").expanduser() / suffix

    @property
    def sqlite_path(self) -> Path:
        path = Path(self.store_path).expanduser() if self.store_path else self.resolved_data_dir / "zonemesh.db"
        return path.resolve()

    def store_url(self) -> str:
        if self.store == "memory":
            return "memory://"
        if self.store == "etcd":
            return f"etcd://{self.etcd_endpoints}?prefix={self.etcd_prefix}"
        return f"sqlite://{self.sqlite_path}"

    def view(self) -> dict[str, Any]:
        """The configuration as GET /config shows it (not the license itself)."""
        view = dataclasses.asdict(self)
        for f in fields(self):
            if f.metadata.get("secret") and view[f.name]:
                view[f.name] = "<redacted>"
        if self.license_inline:
            view["license_inline"] = f"<inline license, {len(self.license_inline)} characters>"
        return view


def _convert(name: str, raw: Any, kind: Any) -> Any:
    if kind in (bool, "bool"):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected true or false, got {raw!r}")
    if kind in (int, "int"):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    return str(raw)


class _SecretFlag(argparse.Action):
    """A secret's flag, there only to refuse it: every local user can read a command line (ps),
    and without it argparse would take ``--etcd-password`` for ``--etcd-password-file``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None) -> None:
        name = self.dest
        parser.error(
            f"{option}: a secret is never taken from the command line (every local user can read it); "
            f"set ZONEMESH_{name.upper()} or {name} in the --config file"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", help="YAML config file (env ZONEMESH_CONFIG)")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("secret"):
            parser.add_argument(flag, dest=f.name, action=_SecretFlag, default=None, help=argparse.SUPPRESS)
        elif f.type in (bool, "bool"):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=f.metadata.get("help")
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=f.metadata.get("help"))


def load(args: argparse.Namespace | None = None, env: dict[str, str] | None = None) -> Config:
    env = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    known = {f.name: f.type for f in fields(Config)}

    config_file = (getattr(args, "config", None) if args else None) or env.get("ZONEMESH_CONFIG")
    if config_file:
        try:
            doc = yaml.safe_load(Path(config_file).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {config_file} must be a YAML mapping")
        for key, raw in doc.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[name] = _convert(name, raw, known[name])

    for env_name, name in ENV_ALIASES.items():
        if env_name in env:
            values[name] = _convert(env_name, env[env_name], known[name])
    for name, kind in known.items():
        env_name = "ZONEMESH_" + name.upper()
        if env_name in env:
            values[name] = _convert(env_name, env[env_name], kind)

    if args is not None:
        for name, kind in known.items():
            raw = getattr(args, name, None)
            if raw is not None:
                values[name] = _convert("--" + name.replace("_", "-"), raw, kind)

    config = Config(**values)
    config.validate()
    return config
