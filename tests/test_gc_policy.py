"""Full garbage collections are kept off planned ends (controller/session/gc_policy.py).

The policy is exercised through `step()` on an injected clock; installing it for
real (freeze, thresholds, thread) is checked once, as the first session does.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from controller.session import gc_policy
from controller.session.gc_policy import (
    DUE_AFTER_GEN1,
    MAX_DEFER_S,
    MIN_INTERVAL_S,
    SAFE_MARGIN_S,
    CollectionPolicy,
)
from tests.support.clock import FakeClock


@pytest.fixture
def collections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Full collections the policy asks for, with a full one always due."""
    ran: list[int] = []
    monkeypatch.setattr(gc_policy.gc, "collect", lambda *a: ran.append(1) or 0)
    monkeypatch.setattr(gc_policy.gc, "get_count", lambda: (0, 0, DUE_AFTER_GEN1))
    yield ran


def test_collects_only_when_no_planned_end_is_near(collections: list[int]) -> None:
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)
    ends = {"a": 10.0, "b": SAFE_MARGIN_S / 2}
    policy.watch(lambda: ends["a"])
    key_b = policy.watch(lambda: ends["b"])
    clock.now += MIN_INTERVAL_S
    assert not policy.step() and collections == []          # b is about to stop
    ends["b"] = SAFE_MARGIN_S + 0.01
    assert policy.step() and collections == [1]             # nothing near: collect
    ends["b"] = 0.0
    clock.now += MIN_INTERVAL_S
    assert not policy.step()
    policy.forget(key_b)                                     # b has ended
    assert policy.step() and len(collections) == 2


def test_sessions_without_a_planned_end_do_not_block(collections: list[int]) -> None:
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)
    policy.watch(lambda: None)     # identifying, or already stopped
    clock.now += MIN_INTERVAL_S
    assert policy.step()


def test_not_more_often_than_the_minimum_interval(collections: list[int]) -> None:
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)
    clock.now += MIN_INTERVAL_S / 2
    assert not policy.step()
    clock.now += MIN_INTERVAL_S / 2
    assert policy.step()
    assert not policy.step()


def test_not_before_it_is_due(monkeypatch: pytest.MonkeyPatch,
                              collections: list[int]) -> None:
    monkeypatch.setattr(gc_policy.gc, "get_count", lambda: (0, 0, DUE_AFTER_GEN1 - 1))
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)
    clock.now += 10 * MAX_DEFER_S
    assert not policy.step() and collections == []


def test_memory_stays_bounded_when_no_safe_moment_comes(collections: list[int]) -> None:
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)
    policy.watch(lambda: 0.0)      # always about to stop
    clock.now += MAX_DEFER_S * 3   # a long quiet spell since the last full collection...
    assert not policy.step()       # ...does not force one: deferral counts from "due"
    clock.now += MAX_DEFER_S - 0.01
    assert not policy.step()
    clock.now += 0.01
    assert policy.step() and policy.deferred_to_limit == 1


def test_a_failing_watcher_counts_as_unsafe(collections: list[int]) -> None:
    clock = FakeClock(100.0)
    policy = CollectionPolicy(clock)

    def broken() -> float:
        raise RuntimeError("mid-teardown")

    policy.watch(broken)
    clock.now += MIN_INTERVAL_S
    assert not policy.step()


def test_installed_by_the_first_session_and_takes_over_full_collections() -> None:
    # Any session in this test process installs it; installing twice is a no-op.
    gc_policy.POLICY.install()
    gc_policy.POLICY.install()
    assert gc_policy.POLICY.installed
    assert gc.get_threshold()[2] > 10**6         # CPython never starts a full one itself
    assert gc.get_freeze_count() > 0             # the start-up heap is frozen
