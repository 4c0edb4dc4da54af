"""Staged join: each path's tail is computed after every path before it, as trained.

Schemas with a ``branch_tail`` (NPR's and Multiverse's newline after ``</step>`` /
``</Path>``) put text between paths that, in training, sees everything before it:
prefix, path 1, its tail, ..., path j. A branch computes its tail in its own row,
where it sees only the prefix and itself. So the join moves the paths in one at a
time and recomputes each tail in the parent's row::

  stage j:  parent row = | prefix | u | path 1 .. close | tail 1 | ... | path j .. close |
            pending      = tail j (its KV computed by this decode step, at its trained
                           position pos(close j) + 1)
            next token   = path j+1's first token (its KV is in that branch's row), or
                           after the last path the join header

Each stage is one decode step of the parent beside every other running request: W
steps per join instead of one. The step's logits score the next token, so a path's
first token (j >= 2) and the join header are scored from the previous tail's row, as
in training. Used when the tail is one token and the block has two paths or more;
otherwise the tails keep their branch-row KV (README, known differences).

A step's stages are parked in one filter of the batch and put back in one merge (the
caller's batches.Injections), and their slot ids move in one indexed copy (`run`), not
one of each per block.
"""

from __future__ import annotations

from collections import deque

from npr_engine.core.detok import DECODE_CONTEXT
from npr_engine.sched.batches import Injections
from npr_engine.sched.kv import move_slots
from npr_engine.sched.lifecycle import free_branch
from npr_engine.sched.logprobs import splice_branch_logprobs
from npr_engine.sched.rebuild import COPY, note_causal, note_slots
from npr_engine.sched.state import Block, Phase, Seq, close_len


def applies(fj, block: Block) -> bool:
    return len(block.branches) >= 2 and len(fj.ctl.tokens(block.parent.schema.branch_tail)) == 1


def begin(block: Block) -> Seq:
    """All branches are parked: the parent's stage 1 is next (`run`)."""
    seq = block.parent
    block.trace.staged = True
    seq.phase, seq.stage = Phase.ACTIVE, block
    seq.unit.joined = True  # the row will hold branch KV: never re-prefill it causally
    # The joined token ids do not describe their KV positions: keep it out of the tree.
    seq.req.skip_radix_cache_insert = True
    return seq


def run(fj, seqs: list[Seq], out: Injections) -> None:
    """Each sequence's next stage: stage 1 after `begin`, or the next after its stage
    step ran (its sampled token was replaced by the next path's first; the caller has
    parked it). Path j = spliced + 1 moves into the parent up to its close tag; its tail
    pends."""
    if not seqs:
        return
    pool, alloc = fj.scheduler.req_to_token_pool, fj.scheduler.token_to_kv_pool_allocator
    moves, dropped, stages = [], [], []
    for seq in seqs:
        block = seq.stage
        branch = block.branches[block.spliced].req
        start = block.prefix_len if block.spliced == 0 else block.prefix_len + block.uncommitted
        close, row, at = close_len(branch), branch.kv.req_pool_idx, seq.req.kv.kv_committed_len
        moves.append((row, start, seq.req.kv.req_pool_idx, at, close - start))
        # Branch j's copy of u (kept from branch 1 only) and its own tail's KV are stale.
        dropped += [(row, block.prefix_len, 0, 0, start - block.prefix_len),
                    (row, close, 0, 0, branch.kv.kv_committed_len - close)]
        stages.append((seq, block, branch, start, close, at))
    stale = move_slots(pool.req_to_token, moves, dropped)
    if stale.numel():
        alloc.free(stale)
    pool.free_rows([branch.kv.req_pool_idx for _, _, branch, *_ in stages])
    for seq, block, branch, start, close, at in stages:
        _stage(fj, seq, block, branch, start, close, at, out)


def abandon(fj, seq: Seq) -> None:
    """The parent finished during a stage (a stop string, say): free what is left."""
    block, seq.stage = seq.stage, None
    if seq.child is not block:
        return  # the unit was aborted whole: lifecycle.abort freed everything
    for branch in block.branches[block.spliced:]:
        free_branch(fj.scheduler, branch)
    seq.child = None
    seq.unit.blocks_open -= 1
    fj.ctl.lifecycle.closed(seq.unit)


def _stage(fj, seq: Seq, block: Block, branch, start: int, close: int, at: int, out: Injections) -> None:
    """Path j's slots [start, close) are at `at` in the parent's row now: the rest."""
    parent, j = seq.req, block.spliced + 1
    end = at + close - start
    note_slots(seq, COPY, at, end, branch.npr, start)
    branch.kv.req_pool_idx = None
    branch.kv.mark_kv_released()
    tokens = list(branch.output_ids[block.fork_len:])
    skip = 0 if j == 1 else 1  # the previous stage step wrote this path's first token
    parent.output_ids.extend(tokens[skip:])
    splice_branch_logprobs(parent, [branch], block.fork_len, skip)
    seq.decoder.resume(parent.output_ids[-DECODE_CONTEXT:], whole=True)  # read as the branch's; ends with its close
    parent.kv.kv_committed_len = parent.kv.kv_allocated_len = end
    block.spliced = j
    # The tail's trained position: right after its path's close tag.
    seq.pos_offset = end - (close - branch.npr.pos_offset)
    note_causal(seq, end)
    if j < len(block.branches):
        seq.forced = deque([block.branches[j].req.output_ids[block.fork_len]])
        out.add(parent, tokens[-1])
        return
    _last_stage(fj, seq, block, end, tokens[-1], out)


def _last_stage(fj, seq: Seq, block: Block, end: int, tail: int, out: Injections) -> None:
    """The last tail pends; the join header follows at pos(longest close) + 1."""
    seq.stage = None  # its step is the join header's first: the normal path takes it
    next_pos = max(close_len(b.req) - b.pos_offset for b in block.branches)
    seq.pre_until, seq.pre_offset = end + 1, seq.pos_offset
    seq.pos_offset = end + 1 - next_pos
    note_causal(seq, end)  # the last tail at its own position, then the continuation
    fj.joined(seq, block)
    header = fj.ctl.tokens(seq.schema.join_header)
    block.trace.join_tokens = len(header)
    budget = seq.unit.root.req.sampling_params.max_new_tokens
    if not seq.is_branch and len(seq.req.output_ids) + len(header) >= budget:
        fj.finish_length(seq)
    else:
        seq.forced = deque(header)
        out.add(seq.req, tail)
    fj.ctl.lifecycle.closed(seq.unit)
