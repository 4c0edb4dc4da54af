"""A unit (root request + every branch forked from it) lives and dies as one.

Abort, client disconnect and retraction act on whole units: a branch alone is never
aborted or retracted, and a unit that must go is aborted with a clear error, every
slot and row it holds freed exactly once. Re-prefilling a joined sequence causally
would be silently wrong, so a unit is never put back in the waiting queue.
"""

from __future__ import annotations

import logging

from sglang.srt.managers.schedule_batch import FINISH_ABORT
from sglang.srt.mem_cache.common import release_kv_cache

from npr_engine.sched.state import Phase, Seq, Unit, seq_of

logger = logging.getLogger("npr_engine")


def unit_seqs(seq: Seq):
    """The sequence and every descendant branch, parents before children."""
    yield seq
    if seq.child is not None:
        for branch in seq.child.branches:
            yield from unit_seqs(branch)


def is_unit_member(req) -> bool:
    """A request SGLang must not retract or re-queue on its own: a branch, a parked
    parent, or a parent whose row holds joined branch KV."""
    seq = seq_of(req)
    return seq is not None and (seq.is_branch or seq.child is not None or seq.unit.joined)


class UnitLifecycle:
    def __init__(self, controller):
        self.scheduler = controller.scheduler
        self.metrics = controller.metrics
        self.extends = controller.extends
        self.open_units: dict[int, Unit] = {}

    def opened(self, unit: Unit) -> None:
        self.open_units[id(unit)] = unit

    def closed(self, unit: Unit) -> None:
        # A member waiting for its extend step is in no batch: the unit stays ours.
        if unit.blocks_open == 0 and unit.extending == 0:
            self.open_units.pop(id(unit), None)

    def matching(self, rid: str, abort_all: bool) -> list[Unit]:
        found = []
        for unit in self.open_units.values():
            rids = [s.req.rid for s in unit_seqs(unit.root)]
            if abort_all or any(r.startswith(rid) for r in rids):
                found.append(unit)
        return found

    def abort(self, unit: Unit, message: str, status: int | None = None) -> None:
        """Free every branch of the unit and finish its root with an abort."""
        s = self.scheduler
        seqs = list(unit_seqs(unit.root))
        branches = [q for q in seqs if q.is_branch]
        running = s.running_batch
        # NOTE: an extend batch that just ran (branches' first step) is merged into the
        # running batch only at the next scheduling point: take the branches out of both.
        for batch in (running, s.last_batch):
            if batch is not None and not batch.is_empty():
                members = [q.req for q in branches if q.req in batch.reqs]
                if members:
                    batch.filter_batch(reqs_to_exclude=members)
        for q in seqs:
            self.extends.discard(q)
        for branch in reversed(branches):  # children first: their rows alias their parents'
            free_branch(s, branch)
        self.metrics.aborted_parked(sum(1 for q in seqs if q.child is not None))
        root = unit.root
        unit.blocks_open = 0
        self.open_units.pop(id(unit), None)
        for q in seqs:
            q.child, q.stage = None, None
            if q.path is not None and q.path.finish is None:
                q.path.finish = "abort"
        if root.phase is Phase.FORKED or root.req not in (running.reqs if running is not None else ()):
            # Parked or waiting for its extend step: not in any batch, so the stock
            # abort cannot see it. Finish it here.
            root.phase = Phase.ACTIVE
            req = root.req
            req.finished_reason = FINISH_ABORT(message, status)
            req.finished_len = len(req.output_ids)
            if req.kv.holds_kv:
                release_kv_cache(req, s.tree_cache, checkpoint=False)
            s.output_streamer.stream_output([req], req.return_logprob)
        else:
            root.req.to_finish = FINISH_ABORT(message, status)
        logger.info("NPR Engine: aborted unit %s (%d branches): %s", root.req.rid, len(branches), message)


def free_branch(scheduler, branch: Seq) -> None:
    kv = branch.req.kv
    if kv.req_pool_idx is None:
        return
    pool = scheduler.req_to_token_pool
    own = pool.req_to_token[kv.req_pool_idx, kv.cache_protected_len : kv.kv_allocated_len]
    if own.numel():
        scheduler.token_to_kv_pool_allocator.free(own.clone())
    pool.free_rows([kv.req_pool_idx])
    kv.req_pool_idx = None
    kv.mark_kv_released()
    branch.phase = Phase.PARKED


RETRACT_MESSAGE = (
    "KV cache pool is full: a parallel-reasoning request cannot be retracted and "
    "re-prefilled (its joined KV has no causal prefill), so it was aborted. Retry later."
)


def after_retract(lifecycle: UnitLifecycle, retracted: list, to_abort: list) -> tuple[list, list]:
    """SGLang retracted unit members under memory pressure, or aborted a branch it could
    not keep (the last request, out of memory): abort their whole units instead."""
    members = [r for r in retracted if is_unit_member(r)]
    branches_aborted = [r for r in to_abort if _is_branch(r)]
    if not members and not branches_aborted:
        return retracted, to_abort
    kept = [r for r in retracted if not is_unit_member(r)]
    # A branch's abort reaches the client as its root's (lifecycle.abort streams it).
    to_abort = [r for r in to_abort if not _is_branch(r)]
    for req in members + branches_aborted:
        seq = req.npr
        if seq.is_branch:
            if id(seq.unit) in lifecycle.open_units:
                lifecycle.abort(seq.unit, RETRACT_MESSAGE, 503)
        else:
            # A joined root: its KV is already released; report it as aborted.
            req.to_finish = FINISH_ABORT(RETRACT_MESSAGE, 503)
            to_abort.append(req)
    logger.warning("NPR Engine: %d unit member(s) retracted; their units were aborted",
                   len(members) + len(branches_aborted))
    return kept, to_abort


def _is_branch(req) -> bool:
    seq = seq_of(req)
    return seq is not None and seq.is_branch


def retraction_order(order: list[int], reqs: list) -> list[int]:
    """SGLang retracts from the end of this list: other requests first, then unit
    members one whole unit at a time (the unit SGLang would give up first goes first),
    so that no unit is left with part of its members retracted."""
    others = [i for i in order if not is_unit_member(reqs[i])]
    units: dict[int, list[int]] = {}
    for i in order:
        if is_unit_member(reqs[i]):
            units.setdefault(id(seq_of(reqs[i]).unit), []).append(i)
    return [i for members in units.values() for i in members] + others
