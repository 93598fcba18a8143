"""shared/jsonpatch.py: RFC 6902 with the options Kuma applies MeshProxyPatch jsonPatches with."""

from __future__ import annotations

import pytest
from zonemesh.shared.jsonpatch import JsonPatchError, apply, pointer


def test_pointer_unescapes_tokens() -> None:
    assert pointer("") == []
    assert pointer("/a~1b/c~0d/0") == ["a/b", "c~d", "0"]
    with pytest.raises(JsonPatchError, match="must start with '/'"):
        pointer("a/b")


def test_add_replace_remove_move_copy() -> None:
    doc = {"name": "api", "list": [1, 2, 3], "nested": {"x": 1}}
    patched = apply(
        doc,
        [
            {"op": "add", "path": "/list/1", "value": 9},
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "replace", "path": "/nested/x", "value": 2},
            {"op": "remove", "path": "/list/0"},
            {"op": "copy", "from": "/name", "path": "/alias"},
            {"op": "move", "from": "/nested", "path": "/moved"},
        ],
    )
    assert patched == {"name": "api", "alias": "api", "list": [9, 2, 3, 4], "moved": {"x": 2}}
    assert doc == {"name": "api", "list": [1, 2, 3], "nested": {"x": 1}}  # the input is left alone


def test_kuma_options_create_missing_objects_ignore_missing_removals_and_count_from_the_end() -> None:
    patched = apply(
        {"list": ["a", "b", "c"]},
        [
            # evanphx's EnsurePathExistsOnAdd: objects (or arrays before an index) are created.
            {"op": "add", "path": "/commonHttpProtocolOptions/idleTimeout", "value": "15s"},
            {"op": "add", "path": "/filters/-", "value": {"name": "f"}},
            # AllowMissingPathOnRemove
            {"op": "remove", "path": "/not/there"},
            {"op": "remove", "path": "/list/7"},
            # SupportNegativeIndices
            {"op": "remove", "path": "/list/-1"},
            {"op": "replace", "path": "/list/-2", "value": "A"},
        ],
    )
    assert patched == {
        "commonHttpProtocolOptions": {"idleTimeout": "15s"},
        "filters": [{"name": "f"}],
        "list": ["A", "b"],
    }


def test_replace_of_the_root_and_of_a_missing_path() -> None:
    assert apply({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}]) == {"b": 2}
    with pytest.raises(JsonPatchError, match=r"operation 0 \(replace /a/b\): path '/a/b' does not exist"):
        apply({"a": {}}, [{"op": "replace", "path": "/a/b", "value": 1}])


@pytest.mark.parametrize(
    ("operation", "reason"),
    [
        ({"op": "test", "path": "/a", "value": 1}, "unknown op 'test'"),
        ({"op": "move", "path": "/b"}, "needs a from path"),
        ({"op": "move", "from": "/missing", "path": "/b"}, "path '/missing' does not exist"),
        ({"op": "add", "path": "/list/5", "value": 1}, "out of range"),
        ({"op": "add", "path": "/list/x", "value": 1}, "not an array index"),
        ({"op": "remove", "path": ""}, "cannot be removed"),
    ],
)
def test_operations_that_cannot_apply_say_why(operation: dict[str, object], reason: str) -> None:
    with pytest.raises(JsonPatchError, match=reason):
        apply({"a": 1, "list": [0]}, [operation])
