"""A unit (root request + every branch forked from it) lives and dies as one.

Abort, client disconnect and retraction act on whole units: a branch alone is never
aborted or retracted, and a unit that must go is aborted with a clear error, every
slot and row it holds freed exactly once. Re-prefilling a joined sequence causally
would be silently wrong, so a unit is never put back in SGLang's waiting queue: a
retracted unit is held here and rebuilt whole (npr_engine/sched/retraction.py).
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
        self.held: dict = {}  # units retracted whole, oldest first (sched/retraction.py)

    def opened(self, unit: Unit) -> None:
        self.open_units[id(unit)] = unit

    def closed(self, unit: Unit) -> None:
        # A member waiting for its extend step is in no batch: the unit stays ours.
        if unit.blocks_open == 0 and unit.extending == 0:
            self.open_units.pop(id(unit), None)

    def matching(self, rid: str, abort_all: bool) -> list[Unit]:
        found = []
        held = [h.unit for h in self.held.values() if id(h.unit) not in self.open_units]
        for unit in [*self.open_units.values(), *held]:
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
        self.held.pop(id(unit), None)
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
