"""Regenerate the tables in docs/ that are derived from code, so the docs cannot drift.

    python scripts/render_docs.py          # rewrite the generated blocks in place
    python scripts/render_docs.py --check  # exit 1 if a block is stale (tests/unit/test_docs.py)

A generated block sits between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from zonemesh.shared.resources import REGISTRY
from zonemesh.shared.resources.registry import ResourceType, Sync

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _sync(rtype: ResourceType) -> str:
    if rtype.sync == Sync.LOCAL:
        return "local"
    parts = []
    if rtype.sync & Sync.GLOBAL_TO_ZONES:
        parts.append("global → zones")
    if rtype.sync & Sync.ZONE_TO_GLOBAL:
        parts.append("zone → global")
    if rtype.sync & Sync.ACROSS_ZONES:
        parts.append("→ other zones")
    return ", ".join(parts)


def _notes(rtype: ResourceType) -> str:
    notes = []
    if rtype.policy:
        notes.append("targetRef policy")
    if rtype.system:
        notes.append("written by control planes only")
    if rtype.sensitive:
        notes.append("reads need an admin")
    return "; ".join(notes)


def types_table() -> str:
    rows = [
        "| type | REST path | scope | KDS sync | zmctl names | notes |",
        "|---|---|---|---|---|---|",
    ]
    for rtype in sorted(REGISTRY, key=lambda t: (t.scope.value, not t.policy, t.name)):
        names = ", ".join(dict.fromkeys(n for n in (rtype.plural, rtype.short_name, *rtype.paths, *rtype.aliases) if n))
        path = f"`{rtype.collection_path('{mesh}')}`" + "".join(f", `{alias}`" for alias in rtype.path_aliases)
        rows.append(f"| {rtype.name} | {path} | {rtype.scope.value} | {_sync(rtype)} | {names} | {_notes(rtype)} |")
    return "\n".join(rows)


def kds_sync_table() -> str:
    """What KDS carries, from the same helpers the KDS server and client use."""
    from zonemesh.shared.resources.registry import downstream_types, upstream_types

    down, up = set(downstream_types()), set(upstream_types())
    rows = [
        "| type | global → zones | zone → global | to other zones | stored at global as "
        "| global's stored on zones as |",
        "|---|---|---|---|---|---|",
    ]
    for rtype in sorted(REGISTRY, key=lambda t: t.name):
        if rtype.name not in down | up:
            continue
        across = bool(rtype.sync & Sync.ACROSS_ZONES)
        # Types both sides create are renamed with Kuma's hash suffix (shared/kds/naming.py).
        at_global = "`{name}-{hash(mesh, name, zone)}`" if rtype.provided_by_both else "`{zone}.{name}`"
        at_zone = "`{name}-{hash(mesh, name)}`, read-only" if rtype.provided_by_both else "its own name, read-only"
        rows.append(
            f"| {rtype.name} | {'yes' if rtype.synced_down else ''} | {'yes' if rtype.name in up else ''} "
            f"| {'yes, as `{zone}.{name}`' if across else ''} "
            f"| {at_global + ', read-only' if rtype.name in up else 'its own name'} "
            f"| {at_zone if rtype.synced_down else ''} |"
        )
    local = sorted(t.name for t in REGISTRY if t.name not in down | up)
    rows += ["", f"Not synced (local to each control plane): {', '.join(local)}."]
    return "\n".join(rows)


def _sections(sections: tuple[str, ...]) -> str:
    return ", ".join(f"`{s}`" for s in sections) or "—"


def policy_support_table() -> str:
    """Where zonemesh applies each targetRef policy type (PolicySupport in the registry)."""
    rows = [
        "| policy | on sidecars | on builtin gateways | details |",
        "|---|---|---|---|",
    ]
    for rtype in sorted(REGISTRY.policies(), key=lambda t: t.name):
        support = rtype.support
        assert support is not None  # the registry refuses a policy type without one
        anchor = rtype.name.lower()
        if not support.supported:
            why = f" why: [policies.md](policies.md#{anchor}) " if support.reason else " "
            rows.append(f"| {rtype.name} | **not supported yet**: refused | **not supported yet**: refused |{why}|")
            continue
        rows.append(
            f"| {rtype.name} | {_sections(support.sidecar)} | {_sections(support.gateway)} "
            f"| [policies.md](policies.md#{anchor}) |"
        )
    return "\n".join(rows)


BLOCKS: dict[str, tuple[str, Callable[[], str]]] = {
    "types": ("resources.md", types_table),
    "policy-support": ("resources.md", policy_support_table),
    "kds-sync": ("kds.md", kds_sync_table),
}


def render(text: str, name: str, body: str) -> str:
    pattern = re.compile(
        rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)",
        re.DOTALL,
    )
    if not pattern.search(text):
        raise SystemExit(f"docs: no generated block {name!r}")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def stale_blocks(write: bool) -> list[str]:
    stale = []
    for name, (filename, produce) in BLOCKS.items():
        path = DOCS / filename
        text = path.read_text()
        new = render(text, name, produce())
        if new != text:
            stale.append(f"{filename}:{name}")
            if write:
                path.write_text(new)
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    args = parser.parse_args()
    stale = stale_blocks(write=not args.check)
    if stale and args.check:
        print(f"stale generated docs: {', '.join(stale)}; run: python scripts/render_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
