"""Kuma DataSources (``shared/resources/types/datasource.py``) as Envoy reads them.

``secret: NAME`` names a Secret of the proxy's mesh and is read at generation: a changed Secret
reaches Envoy with the next round (the reconciler regenerates the mesh's proxies on every Secret
change), and a missing one fails with an error naming the resource and field that refer to it.
What comes out goes into SDS secrets only, so that keys never sit in cluster or listener config.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from zonemesh.zone_cp.xds.context import MeshContext


class MissingSecret(ValueError):
    """A DataSource names a Secret the mesh does not have."""


def content(ctx: MeshContext, source: Mapping[str, Any], where: str) -> bytes | None:
    """The bytes a DataSource stands for (None for ``file``: Envoy reads it on the proxy's host).

    ``where`` names the referring field, e.g. ``ExternalService 'db' networking.tls.clientKey``.
    """
    if source.get("secret"):
        name = str(source["secret"])
        secret = ctx.secret(name)
        if secret is None:
            raise MissingSecret(f"{where}: secret {name!r} not found in mesh {ctx.name!r}")
        try:
            return base64.b64decode(str(secret.spec.get("data") or ""), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{where}: secret {name!r} holds no base64 data") from None
    if source.get("inline"):
        return base64.b64decode(str(source["inline"]))
    if source.get("inlineString"):
        return str(source["inlineString"]).encode()
    if source.get("file"):
        return None
    raise ValueError(f"{where}: a data source needs one of secret, inline, inlineString, file")


def envoy_data_source(ctx: MeshContext, source: Mapping[str, Any], where: str) -> base_pb2.DataSource:
    data = content(ctx, source, where)
    if data is None:
        return base_pb2.DataSource(filename=str(source["file"]))
    return base_pb2.DataSource(inline_bytes=data)
