"""Why a fork cannot run, so that its block is read as sequential text instead."""

from __future__ import annotations

from npr_engine.grammar.schemas import BySchema
from npr_engine.sched.extend import free_kv_tokens
from npr_engine.sched.state import Seq

_COSTS = BySchema(256)  # (schema, path ids) -> block_cost


def fallback_reason(fj, seq: Seq, ids: list[str], rows_taken: int, forks_taken: int) -> str | None:
    """Why the fork cannot run (None: it can). `rows_taken`: rows this step's
    `forks_taken` earlier forks will take (each adds its width less its parent)."""
    width = len(ids)
    if seq.depth + 1 > seq.options.max_depth:
        return "depth"
    per_branch, need = block_cost(fj.ctl, seq.schema, ids)
    root = seq.unit.root.req
    left = root.sampling_params.max_new_tokens - fj.unit_tokens(seq.unit) - fj.closing_reserve(seq.unit)
    if left < need:
        return "max_tokens"
    s = fj.scheduler
    if free_kv_tokens(s) < width * per_branch * 2:
        return "kv_slots"
    running = len(s.running_batch.reqs) if s.running_batch else 0
    if (s.req_to_token_pool.available_size() - rows_taken < width
            or running + rows_taken - forks_taken + width - 1 > s.max_running_requests):
        return "max_running_requests"
    return None


def block_cost(ctl, schema, ids: list[str]) -> tuple[int, int]:
    """Tokens a block's branch writes at least (header, close tag, tail, 2 text), and
    the block with its join header: the same for every block of a schema and width."""
    def count() -> tuple[int, int]:
        tokens = ctl.tokens
        header_cost = max(len(tokens(schema.header(i))) for i in ids)
        per_branch = header_cost + len(tokens(schema.branch_close)) + len(tokens(schema.branch_tail)) + 2
        return per_branch, len(ids) * per_branch + len(tokens(schema.join_header))

    return _COSTS.get(schema, tuple(ids), count)
