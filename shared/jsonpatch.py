"""JSON Patch (RFC 6902) as Kuma applies it to Envoy resources (MeshProxyPatch ``jsonPatches``).

Kuma accepts the operations ``add``, ``remove``, ``replace``, ``move`` and ``copy`` (not ``test``)
and applies them with evanphx/json-patch's options that Kuma users' patches rely on, which RFC
6902 (and the ``jsonpatch`` package on PyPI) do not allow:

- ``add`` creates the missing objects on its path (``/commonHttpProtocolOptions/idleTimeout`` on a
  cluster without ``commonHttpProtocolOptions``), or arrays when the next token is an index or ``-``;
- ``remove`` of a path that does not exist does nothing;
- array indexes may be negative, counted from the end (``-1``: the last element).

That is why this is written here (about a hundred lines) rather than taken from a library.
Paths are JSON Pointers (RFC 6901: ``~1`` is ``/``, ``~0`` is ``~``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

OPERATIONS = ("add", "remove", "replace", "move", "copy")


class JsonPatchError(ValueError):
    """An operation could not be applied; the message says which and why."""


def pointer(path: str) -> list[str]:
    """The reference tokens of a JSON Pointer ("" is the whole document)."""
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"path {path!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def _index(token: str, size: int, *, insert: bool) -> int:
    """An array index: a number (negative: from the end), or ``-`` (the end, to insert)."""
    if token == "-" and insert:
        return size
    try:
        index = int(token)
    except ValueError:
        raise JsonPatchError(f"{token!r} is not an array index") from None
    if index < 0:
        index += size
    limit = size if insert else size - 1
    if not 0 <= index <= limit:
        raise JsonPatchError(f"array index {token} is out of range (the array has {size} elements)")
    return index


def _is_index(token: str) -> bool:
    return token == "-" or token.lstrip("-").isdigit()


def _parent(doc: Any, tokens: Sequence[str], *, create: bool) -> Any:
    """The container holding the last token's target; None when a step is missing (``create``:
    make the missing steps: objects, or arrays when the next token is an index)."""
    node = doc
    for position, token in enumerate(tokens[:-1]):
        if isinstance(node, list):
            if token == "-" and create:
                node.append(None)
                index = len(node) - 1
            else:
                index = _index(token, len(node), insert=False)
            child = node[index]
            key: int | str = index
        elif isinstance(node, dict):
            child, key = node.get(token), token
        else:
            raise JsonPatchError(f"cannot go into a {type(node).__name__} at {'/'.join(tokens[: position + 1])!r}")
        if child is None:
            if not create:
                return None
            child = [] if _is_index(tokens[position + 1]) else {}
            node[key] = child
        node = child
    return node


def _get(doc: Any, tokens: Sequence[str], path: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, create=False)
    last = tokens[-1]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), insert=False)]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    raise JsonPatchError(f"path {path!r} does not exist")


def _add(doc: Any, tokens: Sequence[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, create=True)
    last = tokens[-1]
    if isinstance(parent, list):
        parent.insert(_index(last, len(parent), insert=True), value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise JsonPatchError(f"cannot add into a {type(parent).__name__}")
    return doc


def _remove(doc: Any, tokens: Sequence[str], *, missing_ok: bool, path: str) -> Any:
    parent = _parent(doc, tokens, create=False)
    last = tokens[-1]
    if isinstance(parent, list):
        try:
            del parent[_index(last, len(parent), insert=False)]
        except JsonPatchError:
            if not missing_ok:
                raise
    elif isinstance(parent, dict) and last in parent:
        del parent[last]
    elif not missing_ok:
        raise JsonPatchError(f"path {path!r} does not exist")
    return doc


def _replace(doc: Any, tokens: Sequence[str], value: Any, path: str) -> Any:
    if not tokens:
        return value
    _get(doc, tokens, path)  # it must exist
    parent = _parent(doc, tokens, create=False)
    last = tokens[-1]
    if isinstance(parent, list):
        parent[_index(last, len(parent), insert=False)] = value
    else:
        parent[last] = value
    return doc


def apply(doc: Any, operations: Sequence[Mapping[str, Any]]) -> Any:
    """``doc`` (JSON data, left unchanged) with ``operations`` applied in order."""
    result = copy.deepcopy(doc)
    for number, operation in enumerate(operations):
        op, path = operation.get("op"), operation.get("path")
        try:
            if op not in OPERATIONS:
                raise JsonPatchError(f"unknown op {op!r}: must be one of {', '.join(OPERATIONS)}")
            if not isinstance(path, str):
                raise JsonPatchError("path must be a string")
            tokens = pointer(path)
            if op == "add":
                result = _add(result, tokens, copy.deepcopy(operation.get("value")))
            elif op == "remove":
                if not tokens:
                    raise JsonPatchError("the whole document cannot be removed")
                result = _remove(result, tokens, missing_ok=True, path=path)
            elif op == "replace":
                result = _replace(result, tokens, copy.deepcopy(operation.get("value")), path)
            else:  # move, copy
                source = operation.get("from")
                if not isinstance(source, str):
                    raise JsonPatchError(f"{op} needs a from path")
                source_tokens = pointer(source)
                if op == "move" and not source_tokens:
                    raise JsonPatchError("the whole document cannot be moved")
                value = copy.deepcopy(_get(result, source_tokens, source))
                if op == "move":
                    result = _remove(result, source_tokens, missing_ok=False, path=source)
                result = _add(result, tokens, value)
        except JsonPatchError as exc:
            raise JsonPatchError(f"operation {number} ({op} {path}): {exc}") from None
    return result
