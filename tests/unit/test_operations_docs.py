"""docs/operations.md lists every metric zonemesh registers and every event it logs at warning or
above; both lists are compared with the code here, in both directions, so neither can drift."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
# Import packages and the folders they live in (pyproject [tool.zonemesh.packages]).
PACKAGES = {
    "zonemesh": "zonemesh",
    "zonemesh.shared": "shared",
    "zonemesh.global_cp": "global_cp",
    "zonemesh.zone_cp": "zone_cp",
    "zonemesh.proto": "proto",
}
LOG_LEVELS = ("critical", "error", "exception", "warning")
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]+")


def table(text: str, marker: str) -> list[list[str]]:
    """The rows (cells stripped, header and separator dropped) of the table after <!-- marker -->."""
    start = text.index(f"<!-- {marker} -->")
    end = text.index(f"<!-- end {marker} -->", start)
    lines = [line for line in text[start:end].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def code(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def import_everything() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, name + "."):
            if not module.name.endswith("__main__"):  # `python -m` entry points run on import
                importlib.import_module(module.name)


def exposed(metric: MetricWrapperBase) -> str:
    # What /metrics shows and PromQL uses: counters get the _total suffix.
    return f"{metric._name}_total" if metric._type == "counter" else metric._name


def registered_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    import_everything()
    found = {}
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            found[exposed(collector)] = (collector._type, tuple(collector._labelnames))
    return found


def defined_metrics() -> set[str]:
    """Metric names in prometheus_client constructor calls, read from the source without importing it:
    a second way to find them, so a module the import walk misses still shows up."""
    kinds = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary"}
    names = set()
    for folder in PACKAGES.values():
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            if "prometheus_client" not in text:
                continue
            for node in ast.walk(ast.parse(text)):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in kinds
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    name = str(node.args[0].value)
                    if kinds[node.func.id] == "counter":  # prometheus_client adds _total, and strips a given one
                        name = name.removesuffix("_total") + "_total"
                    names.add(name)
    return names


def logged_events() -> dict[str, set[str]]:
    """event -> levels, for every structlog call at warning or above with a literal event name."""
    events: dict[str, set[str]] = {}
    for folder in PACKAGES.values():
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_LEVELS
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                    and EVENT_NAME.fullmatch(node.args[0].value)
                ):
                    events.setdefault(node.args[0].value, set()).add(node.func.attr)
    return events


def test_metrics_table_matches_the_registry() -> None:
    rows = table(OPERATIONS.read_text(), "metrics-table")
    documented = {code(name)[0]: (kind, tuple(code(labels))) for name, kind, labels, *_ in rows}
    registered = registered_metrics()
    assert registered, "no metric registered: the import walk found nothing"
    missing = sorted(set(registered) - set(documented))
    stale = sorted(set(documented) - set(registered))
    assert not missing, f"metrics registered but not in docs/operations.md: {missing}"
    assert not stale, f"docs/operations.md lists metrics the code does not register: {stale}"
    wrong = {name: (documented[name], registered[name]) for name in registered if documented[name] != registered[name]}
    assert not wrong, f"type or labels differ (docs, code): {wrong}"


def test_every_metric_definition_is_registered_on_import() -> None:
    assert defined_metrics() == set(registered_metrics())


def test_events_table_matches_the_code() -> None:
    rows = table(OPERATIONS.read_text(), "events-table")
    documented = {code(event)[0]: level for event, level, *_ in rows}
    assert len(documented) == len(rows), "an event is listed twice"
    events = logged_events()
    missing = sorted(set(events) - set(documented))
    stale = sorted(set(documented) - set(events))
    assert not missing, f"events logged at warning or above but not in docs/operations.md: {missing}"
    assert not stale, f"docs/operations.md lists events the code does not log at warning or above: {stale}"
    wrong = {e: (documented[e], sorted(events[e])) for e in events if documented[e] not in events[e]}
    assert not wrong, f"level differs (docs, code): {wrong}"


def test_info_events_named_in_the_docs_exist() -> None:
    text = OPERATIONS.read_text()
    prose = text[text.index("Useful `info` events") : text.index("<!-- events-table -->")]
    named = set(re.findall(r"`([a-z][a-z0-9_]+)`", prose))
    source = "\n".join(p.read_text() for f in PACKAGES.values() for p in (ROOT / f).rglob("*.py"))
    absent = sorted(n for n in named if f'"{n}"' not in source)
    assert not absent, f"docs/operations.md names events no code logs: {absent}"


def test_the_table_reader_sees_a_drift() -> None:
    """The comparison is only as good as the parsing: a row dropped from the table is noticed."""
    text = OPERATIONS.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `xds_nack_total`"))
    rows = table(text.replace(row + "\n", ""), "metrics-table")
    assert "xds_nack_total" not in {code(r[0])[0] for r in rows}
    assert "xds_nack_total" in registered_metrics()
