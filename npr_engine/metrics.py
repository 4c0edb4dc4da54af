"""Prometheus metrics of fork/join (DESIGN.md section 6), exported beside SGLang's own.

Created lazily inside the scheduler process: prometheus_client must be imported after
SGLang has set PROMETHEUS_MULTIPROC_DIR, so the HTTP process's `/metrics` collects them.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _metrics():
    from prometheus_client import Counter, Gauge

    return {
        "forked": Counter("npr_blocks_forked_total", "Parallel blocks forked into branches"),
        "branches": Counter("npr_branches_total", "Branch sequences created"),
        "branch_tokens": Counter("npr_branch_tokens_total", "Tokens decoded inside branches"),
        "joins": Counter("npr_joins_total", "Blocks joined back into their parent"),
        "fallbacks": Counter("npr_fallbacks_total", "Blocks decoded sequentially instead", ["reason"]),
        "retracted": Counter("npr_units_retracted_total",
                             "Units retracted whole under KV pressure (rebuilt by prefill later)"),
        "parked": Gauge("npr_parked_parents", "Parents parked while their branches decode",
                        multiprocess_mode="livesum"),
        "rate": Gauge("npr_parallel_rate", "Parallel rate of the last finished request with blocks",
                      multiprocess_mode="mostrecent"),
    }


class NprMetrics:
    """No-ops unless the server runs with metrics on (the launcher's default)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def forked(self, width: int) -> None:
        if self.enabled:
            m = _metrics()
            m["forked"].inc()
            m["branches"].inc(width)
            m["parked"].inc()

    def fallback(self, reason: str) -> None:
        if self.enabled:
            _metrics()["fallbacks"].labels(reason=reason).inc()

    def joined(self, branch_tokens: int) -> None:
        if self.enabled:
            m = _metrics()
            m["joins"].inc()
            m["branch_tokens"].inc(branch_tokens)
            m["parked"].dec()

    def aborted_parked(self, parked: int) -> None:
        if self.enabled and parked:
            _metrics()["parked"].dec(parked)

    def retracted(self) -> None:
        if self.enabled:
            _metrics()["retracted"].inc()

    def finished(self, parallel_rate: float | None) -> None:
        if self.enabled and parallel_rate is not None:
            _metrics()["rate"].set(parallel_rate)
