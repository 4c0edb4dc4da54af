"""The host-cost clock (npr_engine/host_clock.py) charges each moment of a busy step to
the right side: our hooks, SGLang's own code (an AROUND hook's original included), the
forward, and stock code our hooks call (ours in the total, reported apart). A fake
clock advances by hand; no engine."""

from __future__ import annotations

import pytest

from npr_engine import host_clock


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(host_clock, "perf_counter", lambda: now[0])
    fresh = host_clock.HostClock()
    monkeypatch.setattr(host_clock, "CLOCK", fresh)

    def spend(seconds: float) -> None:
        now[0] += seconds

    return fresh, spend


def test_a_step_splits_into_hooks_sglang_forward_and_stock(clock):
    c, spend = clock
    stock = host_clock._stock_called("ScheduleBatch.prepare_for_extend")

    def stock_work():
        spend(3.0)

    def original(x):  # SGLang's function under an AROUND hook
        spend(5.0)
        stock(lambda: stock_work())  # SGLang calling it itself: not ours
        return x

    def our_hook(original, x):
        spend(1.0)
        stock(lambda: stock_work())  # called by our hook: ours, and reported as stock
        return original(x) + 1

    hook = host_clock.timed_hook(host_clock.Hook("pkg.Cls.method", host_clock.Kind.AROUND, our_hook))
    forward = host_clock._timed("forward", lambda: spend(7.0))

    c.begin_iteration()
    c._kind = "extend"
    c.kinds["extend"]["steps"] += 1
    assert hook.fn(original, 41) == 42
    forward()
    spend(2.0)  # SGLang's own, outside every wrapper
    c.end_step(1.0 + 3.0 + 5.0 + 3.0 + 7.0 + 2.0)

    k = c.kinds["extend"]
    assert k["plugin"] == 4.0  # 1 of the hook's own + 3 of stock code it called
    assert k["stock"] == 3.0
    assert k["forward"] == 7.0
    assert k["step"] - k["forward"] - k["plugin"] == 10.0  # 5 + 3 (inside the original) + 2
    assert c.by_hook == {"extend around:pkg.Cls.method": 1.0, "extend stock:ScheduleBatch.prepare_for_extend": 3.0}
    assert c.kinds["decode"]["plugin"] == 0


def test_plugin_time_outside_a_busy_step_is_kept_apart(clock):
    c, spend = clock
    hook = host_clock.timed_hook(host_clock.Hook("pkg.Cls.other", host_clock.Kind.AFTER, lambda *a: spend(2.0)))
    c.begin_iteration()
    hook.fn(None)
    c.end_step(2.0)  # no batch ran this iteration: not a busy step
    report = c.report()
    assert report["plugin_outside_steps"] == 2.0
    assert all(k["plugin"] == 0 and k["steps"] == 0 for k in report["kinds"].values())


def test_a_garbage_collection_is_charged_to_neither_side(clock):
    c, spend = clock
    c._ours()  # this thread is the scheduler's

    def collect(seconds):
        c.on_gc("start", {})
        spend(seconds)
        c.on_gc("stop", {})

    def our_hook(original, x):
        spend(1.0)
        collect(20.0)  # inside our hook
        return original(x)

    def original(x):
        spend(2.0)
        collect(30.0)  # inside SGLang's original, under our AROUND hook
        return x

    hook = host_clock.timed_hook(host_clock.Hook("pkg.Cls.method", host_clock.Kind.AROUND, our_hook))
    c.begin_iteration()
    c._kind = "decode"
    c.kinds["decode"]["steps"] += 1
    hook.fn(original, 0)
    spend(4.0)
    collect(40.0)  # in SGLang's own code, outside every wrapper
    c.end_step(1.0 + 20.0 + 2.0 + 30.0 + 4.0 + 40.0)

    k = c.kinds["decode"]
    assert k["plugin"] == 1.0 and c.by_hook == {"decode around:pkg.Cls.method": 1.0}
    assert k["gc"] == 90.0
    assert k["step"] - k["forward"] - k["plugin"] - k["gc"] == 6.0  # SGLang's own: 2 + 4
