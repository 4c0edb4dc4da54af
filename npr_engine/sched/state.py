"""NPR state attached to SGLang requests: sequences, blocks and units.

A *unit* is a root request plus every branch forked from it, at any depth; SGLang
sees each live sequence as an ordinary `Req`. Each `Req` we track carries a `Seq` in
`req.npr`. A `Block` is one fork: a parked parent and its W branch sequences.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from npr_engine.core.detok import IncrementalDecoder
from npr_engine.core.options import NprOptions
from npr_engine.core.trace import BlockTrace, PathTrace, RequestTrace
from npr_engine.grammar import TagParser, TagSchema


class Phase(Enum):
    ACTIVE = "active"  # decoding in the running batch
    FORKED = "forked"  # parked parent waiting for its block to join
    CLOSING = "closing"  # branch wrote its last token; one step computes that token's KV
    PARKED = "parked"  # branch finished, KV kept for the join
    EXTEND = "extend"  # out of every batch until its injected tokens run as one extend


@dataclass(eq=False)  # these three compare and hash by identity
class Unit:
    root: Seq | None
    trace: RequestTrace
    blocks_open: int = 0
    closing_text: str = ""  # appended to the returned text, never to the KV
    joined: bool = False  # the root row holds joined branch KV (never re-prefill it)
    extending: int = 0  # members waiting in the extend queue (npr_engine/sched/extend.py)
    # The root's KV length at its first fork: [0, causal_len) was computed causally, so a
    # finished reply may leave it in the radix tree (patches/radix_insert.py).
    causal_len: int | None = None


@dataclass(eq=False)
class Seq:
    req: object  # sglang Req
    unit: Unit
    options: NprOptions
    schema: TagSchema
    parser: TagParser
    decoder: IncrementalDecoder
    depth: int = 0  # enclosing blocks
    block: Block | None = None  # the block this sequence is a branch of
    path: PathTrace | None = None
    forced: deque = field(default_factory=deque)  # token ids to inject, one per step
    phase: Phase = Phase.ACTIVE
    close_reason: str | None = None  # set when the branch must close (budget, eos, length)
    fork_out_len: int = 0  # branch: len(output_ids) of the parent at the fork
    child: Block | None = None  # parent: the block it waits for
    pos_offset: int = 0  # stock position minus the `shared` position (DESIGN.md section 3)
    # Tokens at kv index < pre_until (a branch's copy of its parent's uncommitted
    # tokens) take pre_offset, the parent's offset, instead.
    pre_until: int = 0
    pre_offset: int = 0
    injected: int = 0  # tokens of this sequence that the engine injected
    pending_fork: tuple[str, ...] | None = None  # plan items of a fork waiting for its separator
    block_sep: int = 0  # separator tokens written at the pending fork point
    tailing: bool = False  # branch: close tag written, its tail being injected
    close_len: int | None = None  # branch: KV length through its close tag (join position)
    stage: Block | None = None  # parent: the block its staged join is moving in (sched/staged.py)
    # Skipped by the controller until it samples a loud id (sched/calm.py): a calm root,
    # or a quiet branch, which is also looked at again at decode step `wake_step`.
    calm: bool = False
    wake_step: int = 0
    # How the row was written, for a rebuild after retraction (npr_engine/sched/rebuild.py).
    pieces: list = field(default_factory=list)
    after_extend: Phase = Phase.ACTIVE  # the phase an extend step returns the sequence to

    @property
    def is_branch(self) -> bool:
        return self.block is not None

    def own_tokens(self) -> int:
        """Branch tokens after the fork (header, generated text, close tag)."""
        return len(self.req.output_ids) - self.fork_out_len


@dataclass(eq=False)
class Block:
    trace: BlockTrace
    parent: Seq
    prefix_len: int  # L: slots shared by every branch (KV the parent had committed)
    uncommitted: int = 1  # parent tokens after L that every branch computes itself
    branches: list[Seq] = field(default_factory=list)
    spliced: int = 0  # branches a staged join has moved into the parent (sched/staged.py)
    fork_len: int = 0  # len(parent output ids) at the fork

    def all_parked(self) -> bool:
        return all(b.phase is Phase.PARKED for b in self.branches)


def close_len(branch) -> int:
    """A branch request's KV length through its close tag (its tail excluded)."""
    seq = branch.npr
    return seq.close_len if seq.close_len is not None else branch.kv.kv_committed_len


def subtree_tokens(seq: Seq) -> int:
    """Completion tokens of `seq` and of every unjoined branch under it."""
    own = len(seq.req.output_ids) - seq.fork_out_len
    if seq.child is not None:
        # A staged join has already moved its first branches into the parent.
        own += sum(subtree_tokens(b) for b in seq.child.branches[seq.child.spliced:])
    return own


def live_count(unit: Unit) -> int:
    """The unit's branches that still write tokens."""
    return sum(1 for _ in live_branches(unit.root))


def live_branches(seq: Seq):
    """The branches under `seq`, at any depth, that still write tokens."""
    if seq.child is not None:
        for b in seq.child.branches:
            if b.phase in (Phase.ACTIVE, Phase.EXTEND):
                yield b
            yield from live_branches(b)


def seq_of(req) -> Seq | None:
    """The NPR state of an SGLang request, or None if we do not track it."""
    return req.__dict__.get("npr")
