"""The control planes zmctl knows and which one is active, kept in a small YAML file.

Location: ``$ZMCTL_CONFIG``, else ``~/.zmctl/config.yaml``. The file may hold user tokens
(``--auth-type tokens --auth-conf token=...``, as kumactl, or ``--headers "authorization=Bearer
..."``), so it is written with mode 0600 and neither tokens nor header values are ever printed.
Reading never writes: without a file, the built-in ``local`` control plane (http://127.0.0.1:5681)
is active.

Format::

    currentControlPlane: prod
    controlPlanes:
    - name: local
      address: http://127.0.0.1:5681
      headers: {}
    - name: prod
      address: http://cp.example:5681
      headers: {}
      authType: tokens
      authConf: {token: eyJhbGciOi...}
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from zonemesh.ctl.errors import CtlError, UsageError

CONFIG_ENV = "ZMCTL_CONFIG"
DEFAULT_NAME = "local"
DEFAULT_ADDRESS = "http://127.0.0.1:5681"
REDACTED = "<redacted>"
# Kuma's --auth-type values zmctl supports: "tokens" sends a user token as a bearer token.
AUTH_TYPES = ("tokens",)
TOKEN_CONF_KEYS = ("token", "token-file")


@dataclass
class ControlPlane:
    name: str
    address: str
    headers: dict[str, str] = field(default_factory=dict)
    auth_type: str = ""
    auth_conf: dict[str, str] = field(default_factory=dict)

    def request_headers(self) -> dict[str, str]:
        """What every request to this control plane carries: its headers, and its user token."""
        if self.auth_type == "tokens":
            return {**self.headers, "Authorization": f"Bearer {self.auth_conf['token']}"}
        return dict(self.headers)


@dataclass
class CtlConfig:
    current: str = DEFAULT_NAME
    control_planes: dict[str, ControlPlane] = field(
        default_factory=lambda: {DEFAULT_NAME: ControlPlane(DEFAULT_NAME, DEFAULT_ADDRESS)}
    )

    def active(self) -> ControlPlane:
        try:
            return self.control_planes[self.current]
        except KeyError:
            raise CtlError(
                f"the active control plane {self.current!r} is not defined in the zmctl config",
                ["switch to a defined one: zmctl config control-planes switch --name NAME"],
            ) from None

    def add(self, cp: ControlPlane, *, overwrite: bool = False) -> None:
        """Add (or with ``overwrite`` replace) a control plane and make it the active one, as kumactl does."""
        if cp.name in self.control_planes and not overwrite:
            raise CtlError(f"control plane {cp.name!r} already exists: pass --overwrite to replace it")
        self.control_planes[cp.name] = cp
        self.current = cp.name

    def switch(self, name: str) -> None:
        self._require(name)
        self.current = name

    def remove(self, name: str) -> None:
        self._require(name)
        del self.control_planes[name]
        if self.current == name:
            # Fall back to any remaining one rather than leave a dangling "current".
            self.current = next(iter(self.control_planes), DEFAULT_NAME)

    def _require(self, name: str) -> None:
        if name not in self.control_planes:
            known = ", ".join(sorted(self.control_planes)) or "none"
            raise CtlError(f"there is no control plane named {name!r} (known: {known})")

    def to_dict(self, *, redact: bool = True) -> dict[str, Any]:
        return {
            "currentControlPlane": self.current,
            "controlPlanes": [_plane_dict(cp, redact) for cp in self.control_planes.values()],
        }


def _plane_dict(cp: ControlPlane, redact: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": cp.name,
        "address": cp.address,
        "headers": {k: (REDACTED if redact else v) for k, v in cp.headers.items()},
    }
    if cp.auth_type:
        entry["authType"] = cp.auth_type
        entry["authConf"] = {k: (REDACTED if redact else v) for k, v in cp.auth_conf.items()}
    return entry


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    return Path("~/.zmctl/config.yaml").expanduser()


def load(path: Path) -> CtlConfig:
    if not path.exists():
        return CtlConfig()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CtlError(f"cannot read the zmctl config {path}: {exc}") from None
    if raw is None:
        return CtlConfig()
    try:
        return _from_dict(raw)
    except (TypeError, KeyError, ValueError) as exc:
        raise CtlError(
            f"the zmctl config {path} is malformed: {exc}", ["fix or delete the file (a default one is used then)"]
        ) from None


def _from_dict(raw: Any) -> CtlConfig:
    if not isinstance(raw, dict):
        raise TypeError("the top level must be a mapping")
    planes: dict[str, ControlPlane] = {}
    for entry in raw.get("controlPlanes") or []:
        if not isinstance(entry, dict):
            raise TypeError("each controlPlanes entry must be a mapping")
        headers = entry.get("headers") or {}
        if not isinstance(headers, dict):
            raise TypeError(f"headers of {entry.get('name')!r} must be a mapping")
        auth_type = str(entry.get("authType") or "")
        auth_conf = entry.get("authConf") or {}
        if not isinstance(auth_conf, dict):
            raise TypeError(f"authConf of {entry.get('name')!r} must be a mapping")
        if auth_type and (auth_type not in AUTH_TYPES or not auth_conf.get("token")):
            raise ValueError(f"control plane {entry.get('name')!r}: authType must be tokens, with authConf.token")
        cp = ControlPlane(
            str(entry["name"]),
            str(entry["address"]),
            {str(k): str(v) for k, v in headers.items()},
            auth_type,
            {str(k): str(v) for k, v in auth_conf.items()},
        )
        planes[cp.name] = cp
    return CtlConfig(current=str(raw.get("currentControlPlane") or DEFAULT_NAME), control_planes=planes)


def save(config: CtlConfig, path: Path) -> None:
    """Write atomically (temp file + rename) with mode 0600: the file may hold tokens."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = yaml.safe_dump(config.to_dict(redact=False), sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".yaml")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def parse_headers(values: Iterable[str], flag: str = "--headers") -> dict[str, str]:
    """``--headers "k=v"`` (repeatable; also ``k=v,k2=v2`` as kumactl's stringToString accepts)."""
    headers: dict[str, str] = {}
    for value in values:
        for pair in value.split(","):
            key, sep, val = pair.partition("=")
            if not sep or not key.strip():
                # Not echoed: a mistyped entry may be a token.
                raise UsageError(f"invalid {flag} entry (no name=value): use {flag} 'name=value'")
            headers[key.strip()] = val.strip()
    return headers


def parse_auth(auth_type: str | None, auth_conf: Iterable[str], headers: Mapping[str, str]) -> dict[str, str]:
    """The stored ``authConf`` of ``--auth-type tokens --auth-conf token=T`` (or ``token-file=PATH``,
    read now: a token on the command line is visible to other local users in the process list)."""
    conf = parse_headers(auth_conf, flag="--auth-conf")
    if not auth_type:
        if conf:
            raise UsageError("--auth-conf needs --auth-type tokens")
        return {}
    if auth_type not in AUTH_TYPES:
        raise UsageError(f"--auth-type {auth_type!r} is not supported: use --auth-type tokens")
    unknown = sorted(set(conf) - set(TOKEN_CONF_KEYS))
    if unknown or len(conf) != 1:
        raise UsageError(
            "--auth-type tokens takes exactly one of --auth-conf token=TOKEN or --auth-conf token-file=PATH"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    if any(name.lower() == "authorization" for name in headers):
        raise UsageError("give the token with --auth-conf or as an authorization header, not both")
    token = conf.get("token")
    if token is None:
        path = Path(conf["token-file"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise UsageError(f"--auth-conf token-file: cannot read {path}: {exc.strerror}") from None
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise UsageError(
            "--auth-conf: the token is not a JWT (three dot-separated parts); see zmctl generate user-token"
        )
    return {"token": token}


def check_address(address: str) -> str:
    """A control plane address must be an http(s) URL with a host, e.g. http://127.0.0.1:5681."""
    parts = urlsplit(address)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid control plane address {address!r}: use http://HOST:PORT or https://HOST:PORT")
    try:
        parts.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError:
        raise UsageError(f"invalid port in control plane address {address!r}") from None
    return address.rstrip("/")
