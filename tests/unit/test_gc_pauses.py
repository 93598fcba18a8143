"""Garbage collections are timed once the control plane has tuned the collector: each goes to
the gc_pause_seconds histogram, and a long one is logged (it can cost a leader its term)."""

from __future__ import annotations

import gc

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from zonemesh.shared import runtime


@pytest.fixture
def tuned() -> object:
    thresholds = gc.get_threshold()
    runtime.tune_gc()
    yield
    gc.callbacks.remove(runtime._time_collection)
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def full_collections() -> float:
    return REGISTRY.get_sample_value("gc_pause_seconds_count", {"generation": "2"}) or 0.0


def test_every_collection_is_timed_and_a_long_one_logged(tuned: object, monkeypatch: pytest.MonkeyPatch) -> None:
    before = full_collections()
    gc.collect()
    assert full_collections() == before + 1
    assert gc.callbacks.count(runtime._time_collection) == 1
    runtime.tune_gc()  # a second control plane in one process: still timed once
    assert gc.callbacks.count(runtime._time_collection) == 1

    monkeypatch.setattr(runtime, "GC_PAUSE_LOGGED", 0.0)
    with capture_logs() as logs:
        gc.collect()
    pauses = [entry for entry in logs if entry["event"] == "gc_pause"]
    assert pauses and pauses[-1]["generation"] == 2 and pauses[-1]["tracked"] > 0


def test_a_short_collection_is_not_logged(tuned: object) -> None:
    with capture_logs() as logs:
        gc.collect(0)
    assert not [entry for entry in logs if entry["event"] == "gc_pause"]


def young_collections() -> float:
    return REGISTRY.get_sample_value("gc_pause_seconds_count", {"generation": "0"}) or 0.0


def test_a_round_runs_without_automatic_collections_and_one_follows_it(tuned: object) -> None:
    from zonemesh.shared.aio import gc_paused

    before = young_collections()
    with gc_paused():
        with gc_paused():  # rounds may overlap: the inner one's end does not resume collecting
            pass
        assert not gc.isenabled()
        kept = [[i] for i in range(5 * gc.get_threshold()[0])]  # five thresholds' worth of tracked objects
        assert young_collections() == before
    assert gc.isenabled()
    [[i] for i in range(10)]  # the next allocation collects what the round left
    assert young_collections() == before + 1
    assert len(kept) == 5 * gc.get_threshold()[0]


def test_a_collector_that_was_off_stays_off() -> None:
    from zonemesh.shared.aio import gc_paused

    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
