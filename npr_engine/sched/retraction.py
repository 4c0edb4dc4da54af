"""Retraction without loss: under KV pressure a unit is held whole and rebuilt later.

SGLang retracts running requests when the next decode step does not fit, frees their
KV and re-queues them for a prefill of their token ids. A unit's rows do not follow
from token ids causally (branches alias their parent's prefix and restart positions at
the fork; a joined parent holds its branches' KV), so a unit member is never released
or re-queued by SGLang: the first member SGLang picks *holds* the unit instead. Every
row it has is freed, each member remembers its KV length and phase, and the unit waits
here, out of every batch. At each scheduling point the oldest held unit whose rebuild
fits (with room for its next steps) is rebuilt by prefill (npr_engine/sched/rebuild.py)
and its live members go back through the extend queue: their pending tokens run as one
extend, which samples exactly the token their next decode step would have. Nothing is
lost and no token is sampled twice. While units are held no new request is admitted.
A unit that cannot fit even with nothing else running is aborted with an error naming
the pool size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sglang.srt.environ import envs
from sglang.srt.mem_cache.common import release_kv_cache

from npr_engine.sched.extend import free_kv_tokens
from npr_engine.sched.lifecycle import free_branch, is_unit_member, unit_seqs
from npr_engine.sched.rebuild import Rebuild, rebuild_cost
from npr_engine.sched.state import Phase, Seq, Unit, seq_of

logger = logging.getLogger("npr_engine")


@dataclass
class Held:
    unit: Unit
    live: list[tuple[Seq, int, Phase, Phase]]  # members that held KV: (seq, KV length, phase, after_extend)

    def lengths(self) -> list[tuple[Seq, int]]:
        return [(q, n) for q, n, _, _ in self.live]

    def stepping(self) -> list[tuple[Seq, int]]:
        """Members that were decoding or waiting for an extend: they step again."""
        return [(q, n) for q, n, phase, _ in self.live if phase in _STEPPING]


_STEPPING = (Phase.ACTIVE, Phase.CLOSING, Phase.EXTEND)


def too_big_message(scheduler, need: int) -> str:
    size = scheduler.token_to_kv_pool_allocator.size
    return (f"KV cache pool is full: this parallel-reasoning request needs {need} KV tokens to "
            f"continue, more than the {size}-token pool can give it even with nothing else "
            "running. Ask for fewer paths or tokens, or start the server with a larger "
            "--max-total-tokens.")


def hold(ctl, unit: Unit) -> None:
    """Free every row of the unit and keep it, whole, for a rebuild."""
    lifecycle = ctl.lifecycle
    if id(unit) in lifecycle.held:
        return
    s = ctl.scheduler
    seqs = list(unit_seqs(unit.root))
    live = [(q, q.req.kv.kv_committed_len, q.phase, q.after_extend) for q in seqs
            if q.req.kv.req_pool_idx is not None]
    for q in seqs:
        ctl.extends.discard(q)
    for q, *_ in reversed(live):  # children first: their rows alias their parents'
        if q.is_branch:
            free_branch(s, q)
    root = unit.root.req
    if root.kv.req_pool_idx is not None:
        release_kv_cache(root, s.tree_cache, checkpoint=False)
    root.prefix_len, root.last_node, root.lock = 0, None, None
    root.kv.cache_protected_len = root.kv.cache_inserted_len = root.kv.kv_committed_len = 0
    root.retraction_count += 1
    for q, _, phase, after in live:
        q.phase, q.after_extend = phase, after
    unit.trace.retractions += 1
    lifecycle.held[id(unit)] = Held(unit, live)
    ctl.metrics.retracted()
    logger.info("NPR Engine: retracted unit %s (%d rows, %d KV tokens) to rebuild later",
                root.rid, len(live), sum(n for _, n, *_ in live))


def hold_all(ctl, running_batch, last_batch) -> None:
    """Hold every unit (SGLang's `pause_generation` in `retract` mode, before a weight
    update: every KV is rebuilt under the new weights) and take their members out of the
    batches SGLang is about to retract, so that it re-queues only other requests."""
    lifecycle = ctl.lifecycle
    units = {id(u): u for u in lifecycle.open_units.values()}
    for batch in (running_batch, last_batch):
        for req in batch.reqs if batch is not None else ():
            if is_unit_member(req):
                units.setdefault(id(seq_of(req).unit), seq_of(req).unit)
    for unit in units.values():
        hold(ctl, unit)
    if running_batch is not None:
        _drop_held(lifecycle, running_batch)
    if last_batch is not None and last_batch is not running_batch:
        # NOTE: an extend batch SGLang drops right after reading its requests.
        last_batch.reqs = [r for r in last_batch.reqs if not is_held(lifecycle, r)]


def _drop_held(lifecycle, batch) -> None:
    """Take the members of held units out of `batch` (their KV is already freed)."""
    left = [r for r in batch.reqs if is_held(lifecycle, r)]
    if left:
        batch.filter_batch(reqs_to_exclude=left)


def is_held(lifecycle, req) -> bool:
    seq = seq_of(req)
    return seq is not None and id(seq.unit) in lifecycle.held


def after_retract(ctl, batch, retracted: list, to_abort: list) -> tuple[list, list]:
    """SGLang's retraction ran: the units it touched are held (`hold`, from its
    `release_req`). Keep their members out of its queue and its aborts, and out of the
    batch where it stopped retracting before it reached them all."""
    lifecycle = ctl.lifecycle
    if not lifecycle.held:
        return retracted, to_abort
    for req in to_abort:
        if is_held(lifecycle, req):
            req.to_finish = None  # SGLang's "out of memory" for its last request: held instead
    _drop_held(lifecycle, batch)
    return ([r for r in retracted if not is_held(lifecycle, r)],
            [r for r in to_abort if not is_held(lifecycle, r)])


def resume_held(ctl, running_batch) -> None:
    """At a scheduling point: rebuild held units, oldest first, while they fit."""
    lifecycle, s = ctl.lifecycle, ctl.scheduler
    for held in list(lifecycle.held.values()):
        slots, rows = rebuild_cost(held.lengths())
        stepping = held.stepping()
        # Its rows, its members' pending tokens and a step each; beside other running
        # requests, room for SGLang's own margin of decode steps too.
        least = slots + sum(_tokens(q.req) - n for q, n in stepping) + len(stepping)
        running = len(running_batch.reqs) if running_batch is not None else 0
        alone = running == 0 and not len(ctl.extends)
        need = least if alone else least + len(stepping) * envs.SGLANG_RETRACT_DECODE_STEPS.get()
        fits = (free_kv_tokens(s) >= need and s.req_to_token_pool.available_size() >= rows
                and running + len(stepping) <= s.max_running_requests)
        if not fits:
            if alone or least > s.token_to_kv_pool_allocator.size:
                lifecycle.abort(held.unit, too_big_message(s, least), 503)
                continue
            return  # oldest first: no held unit overtakes another
        _rebuild(ctl, held)


def _rebuild(ctl, held: Held) -> None:
    unit = held.unit
    del ctl.lifecycle.held[id(unit)]
    build = Rebuild(ctl.scheduler, held.lengths())
    rows = build.run()
    for q, n, phase, after in held.live:
        kv = q.req.kv
        kv.req_pool_idx = rows[id(q)]
        kv.kv_committed_len = kv.kv_allocated_len = n
        kv.cache_protected_len = q.pieces[0].end if q.is_branch else 0
        q.phase, q.after_extend = phase, after
    # Rebuilt rows share nothing with the radix tree: the reply stays out of it.
    unit.root.req.skip_radix_cache_insert = True
    unit.causal_len = None
    for q, _, phase, _ in held.live:
        if phase in _STEPPING:
            if phase is not Phase.EXTEND:
                q.after_extend = phase  # a decode step's work, done by an extend
            ctl.queue_extend(q)
    logger.info("NPR Engine: rebuilt unit %s (%d rows) in %d extend steps",
                unit.root.req.rid, len(held.live), build.waves)


def _tokens(req) -> int:
    return len(req.origin_input_ids) + len(req.output_ids)


def retraction_order(order: list[int], reqs: list) -> list[int]:
    """SGLang retracts from the end of this list: other requests first, then unit
    members one whole unit at a time (the unit SGLang would give up first goes first)."""
    others = [i for i in order if not is_unit_member(reqs[i])]
    units: dict[int, list[int]] = {}
    for i in order:
        if is_unit_member(reqs[i]):
            units.setdefault(id(seq_of(reqs[i]).unit), []).append(i)
    return [i for members in units.values() for i in members] + others
