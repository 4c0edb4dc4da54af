"""Where the scheduler thread's time goes: our hooks vs SGLang's own work (opt-in).

With `NPR_HOST_PROFILE=1` every hook the plugin installs is timed (all of them, not a
chosen few), and a few stock scheduler functions are bracketed to measure SGLang's
own time per step beside ours, in the same run (benchmarks/host_overhead.py)::

  busy step   ingest_requests + get_next_batch_to_run + run_batch + process_batch_result
              of a loop iteration that ran a batch
  forward     ModelRunner.forward and ModelRunner.sample (the device work, excluded)
  plugin      every moment inside one of our hooks, minus the original an AROUND hook
              calls (time is exclusive: a hook inside a hook counts once)
  sglang      busy step - forward - plugin - gc (the plugin's time inside busy steps)
  stock       of the plugin's time, what a few stock functions our hooks call took
              (batch building and parking, branch requests: `STOCK_CALLED`); still the
              plugin's in `plugin`, reported apart to show what our own code costs

Busy steps are kept apart by kind (`decode`, `extend`); plugin time outside them (an
abort, a `get_server_info` call, an idle check) is reported as `plugin_outside_steps`.

Python's garbage collections are charged to neither side (`gc`, reported apart): one
runs inside whatever code allocates when a threshold is crossed, and a full
collection of the engine's heap (some 0.6 s on a 2-core CPU) would otherwise land at
random on our hooks or on SGLang's code.

Time is charged to whatever mode is on top of a stack at each switch, so nesting in
any order (our hook inside a stock call inside our hook) stays exact.

NOTE: the clock is the scheduler thread's own CPU time (`time.thread_time`), not wall
time: on a small CPU machine the scheduler shares its cores with the tokenizer and
detokenizer processes and the forward's worker threads, and being descheduled would
count as work. (The forward's own CPU share on this thread is excluded with it.) Off by default:
the wrappers are not installed at all then.
"""

from __future__ import annotations

import functools
import gc
import os
import threading
from time import thread_time as perf_counter  # see the NOTE in the docstring

from npr_engine.hooks import Hook, Kind

ENV = "NPR_HOST_PROFILE"
_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"
_BATCH = "sglang.srt.managers.schedule_batch.ScheduleBatch"
# Stock code our hooks call that does SGLang's own kind of work for us.
STOCK_CALLED = (f"{_BATCH}.prepare_for_extend", f"{_BATCH}.filter_batch", f"{_BATCH}.merge_batch",
                f"{_BATCH}.init_new", "sglang.srt.managers.schedule_batch.Req.__init__",
                "sglang.srt.sampling.sampling_batch_info.SamplingBatchInfo.from_schedule_batch")


def enabled() -> bool:
    return os.environ.get(ENV) == "1"


class HostClock:
    def __init__(self) -> None:
        self._stack: list[str] = []
        self._mark = perf_counter()
        self._thread: int | None = None
        self.seconds = {"plugin": 0.0, "forward": 0.0, "stock": 0.0, "gc": 0.0}
        # Plugin seconds by "<kind of the step it ran in> <hook name>" (kind "-": before the
        # iteration's batch is known, or outside any step).
        self.by_hook: dict[str, float] = {}
        # Per kind of busy step: steps, request_steps (sum of batch sizes), step, forward, plugin.
        self.kinds = {kind: dict.fromkeys(("steps", "request_steps", "step", "forward", "plugin", "stock", "gc"), 0)
                      for kind in ("decode", "extend")}
        self.pending = 0.0  # this iteration's time before its batch (kept if one runs)
        self._iter = (0.0, 0.0, 0.0, 0.0)  # plugin, forward, stock, gc seconds when this iteration began
        self._kind: str | None = None  # the kind of the batch this iteration runs
        self._gc_start: float | None = None
        self._gc_unsplit = 0.0  # collections since the mark, inside the mode on top of the stack

    def on_gc(self, phase: str, info: dict) -> None:
        """gc.callbacks entry: a collection's time, taken out of the mode it interrupted."""
        if threading.get_ident() != self._thread:  # (collections on other threads: not timed)
            return
        now = perf_counter()
        if phase == "start":
            self._gc_start = now
        elif self._gc_start is not None:
            spent, self._gc_start = now - self._gc_start, None
            self.seconds["gc"] += spent
            if self._stack:
                self._gc_unsplit += spent

    def _ours(self) -> bool:
        me = threading.get_ident()
        if self._thread is None:
            self._thread = me
        return me == self._thread

    def enter(self, mode: str) -> None:
        now = perf_counter()
        if self._stack:
            self._charge(self._stack[-1], now)
        self._stack.append(mode)
        self._mark = now

    def leave(self) -> None:
        now = perf_counter()
        self._charge(self._stack.pop(), now)
        self._mark = now

    def _charge(self, mode: str, now: float) -> None:
        spent, self._gc_unsplit = now - self._mark - self._gc_unsplit, 0.0
        if mode == "forward":
            self.seconds["forward"] += spent
        elif mode != "sglang":  # a hook's name, or stock code one called
            self.seconds["plugin"] += spent
            if mode.startswith("stock:"):
                self.seconds["stock"] += spent
            key = f"{self._kind or '-'} {mode}"
            self.by_hook[key] = self.by_hook.get(key, 0.0) + spent

    def begin_iteration(self) -> None:
        self.pending, self._kind = 0.0, None
        self._iter = (self.seconds["plugin"], self.seconds["forward"], self.seconds["stock"], self.seconds["gc"])

    def end_step(self, seconds: float) -> None:
        """The busy step of this iteration ended after `seconds` of its own time."""
        if self._kind is None:
            return
        k = self.kinds[self._kind]
        k["step"] += seconds
        k["plugin"] += self.seconds["plugin"] - self._iter[0]
        k["forward"] += self.seconds["forward"] - self._iter[1]
        k["stock"] += self.seconds["stock"] - self._iter[2]
        k["gc"] += self.seconds["gc"] - self._iter[3]
        self._kind = None

    def report(self) -> dict:
        inside = sum(k["plugin"] for k in self.kinds.values())
        return {"kinds": {name: dict(k) for name, k in self.kinds.items()},
                "plugin_outside_steps": self.seconds["plugin"] - inside, "by_hook": dict(self.by_hook)}


CLOCK = HostClock()


def watch_gc() -> None:
    """Take collections out of both sides (installed with the profile hooks)."""
    if CLOCK.on_gc not in gc.callbacks:
        gc.callbacks.append(CLOCK.on_gc)


def _charged(mode: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), its time charged to `mode`."""
    CLOCK.enter(mode)
    try:
        return fn(*args, **kwargs)
    finally:
        CLOCK.leave()


def _timed(mode: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not CLOCK._ours():
            return fn(*args, **kwargs)
        return _charged(mode, fn, *args, **kwargs)

    return wrapper


def timed_hook(hook: Hook) -> Hook:
    """The same hook, its own time charged to the plugin; an AROUND hook's call of the
    original is charged back to SGLang."""
    fn = hook.fn
    if hook.kind is Kind.AROUND:
        inner = fn
        timed = [None, None]  # (original, its timed wrapper): built once, not per call

        def fn(original, *args, **kwargs):
            if timed[0] is not original:
                timed[:] = original, _timed("sglang", original)
            return inner(timed[1], *args, **kwargs)

        fn = functools.wraps(inner)(fn)
    return Hook(hook.target, hook.kind, _timed(hook.name, fn), hook.pinned)


def time_methods(cls: type, ours: tuple[str, ...], stock: tuple[str, ...]) -> None:
    """Time plugin code that is no hook (a class of ours SGLang calls into): the methods
    in `ours` are charged to the plugin, those in `stock` (which call SGLang's) to SGLang."""
    for name in ours:
        setattr(cls, name, _timed(f"method:{cls.__name__}.{name}", getattr(cls, name)))
    for name in stock:
        setattr(cls, name, _timed("sglang", getattr(cls, name)))


# -- the stock brackets ----------------------------------------------------------------


def _ingest(original, scheduler, *args, **kwargs):
    """ingest_requests begins each loop iteration."""
    CLOCK.begin_iteration()
    return _until_batch(original, scheduler, *args, **kwargs)


def _until_batch(original, scheduler, *args, **kwargs):
    """ingest_requests, get_next_batch_to_run: their time joins the step if a batch runs."""
    start = perf_counter()
    try:
        return original(scheduler, *args, **kwargs)
    finally:
        CLOCK.pending += perf_counter() - start


def _run_batch(original, scheduler, batch, *args, **kwargs):
    CLOCK._kind = "decode" if batch.forward_mode.is_decode() else "extend"
    k = CLOCK.kinds[CLOCK._kind]
    k["steps"] += 1
    k["request_steps"] += len(batch.reqs)
    start = perf_counter()
    try:
        return original(scheduler, batch, *args, **kwargs)
    finally:
        CLOCK.pending += perf_counter() - start


def _process_result(original, scheduler, *args, **kwargs):
    start = perf_counter()
    try:
        return original(scheduler, *args, **kwargs)
    finally:
        CLOCK.end_step(perf_counter() - start + CLOCK.pending)


def _device(original, *args, **kwargs):
    return _timed("forward", original)(*args, **kwargs)


def _stock_called(name: str):
    mode = f"stock:{name}"

    def around(original, *args, **kwargs):
        top = CLOCK._stack[-1] if CLOCK._stack and CLOCK._ours() else "sglang"
        if top in ("sglang", "forward") or top.startswith("stock:"):
            return original(*args, **kwargs)  # SGLang's own call
        return _charged(mode, original, *args, **kwargs)

    return around


def profile_hooks() -> list[Hook]:
    """The stock brackets (installed only when profiling)."""
    return [
        Hook(f"{_SCHED}.ingest_requests", Kind.AROUND, _ingest),
        Hook(f"{_SCHED}.get_next_batch_to_run", Kind.AROUND, _until_batch),
        Hook(f"{_SCHED}.run_batch", Kind.AROUND, _run_batch),
        Hook(f"{_SCHED}.process_batch_result", Kind.AROUND, _process_result),
        Hook(f"{_RUNNER}.forward", Kind.AROUND, _device),
        Hook(f"{_RUNNER}.sample", Kind.AROUND, _device),
    ] + [Hook(target, Kind.AROUND, _stock_called(".".join(target.split(".")[-2:]))) for target in STOCK_CALLED]
