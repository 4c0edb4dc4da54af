"""Rebuilding a retracted unit's KV by prefill (npr_engine/sched/lifecycle.py).

Every row a unit holds is recorded, as it is written, as a list of *pieces* in row
order (`Seq.pieces`)::

    causal  slots the sequence computed itself: each token attends to the row before
            it, at its stock position minus the offsets the sequence had then
            (patches/positions.py)
    alias   a branch's first L slots: its parent's prefix (no KV of its own)
    copy    slots a join moved in from a branch row (that branch's own KV)

Row index k holds the KV of token k of `origin_input_ids + output_ids`, so pieces and
token ids are all a rebuild needs. It gives each sequence that held KV a fresh row and
each joined branch a scratch row, recomputes causal pieces as extends over the row
built so far, fills alias and copy pieces from rows already rebuilt, and frees what
the scratch rows computed that no join kept (branch j's copy of the fork token, a
tail a staged join recomputed). The forward steps run at the scheduling point as
*waves*: every piece whose inputs are ready goes in one extend batch, whose sampled
tokens are dropped (the reply sees none of this). A block's paths rebuild side by
side, so a unit costs about as many waves as its deepest chain of pieces.
"""

from __future__ import annotations

import copy
import uuid
from array import array
from dataclasses import dataclass, field

from sglang.srt.managers.schedule_batch import Req

from npr_engine.sched.extend import build_extend_batch

CAUSAL, ALIAS, COPY = "causal", "alias", "copy"
REBUILD_RID_PREFIX = "npr-rebuild-"


@dataclass
class Piece:
    kind: str
    start: int  # first row index of the piece
    offsets: tuple[int, int, int] = (0, 0, 0)  # causal: pos_offset, pre_until, pre_offset
    src: object = None  # alias / copy: the Seq whose row the slots come from
    src_start: int = 0
    end: int = 0  # alias / copy: row index after the piece


@dataclass
class _Offsets:
    """What patches/positions.py reads of a sequence, for a rebuild step."""
    pos_offset: int
    pre_until: int
    pre_offset: int


# -- recording (forking.py, staged.py, controller.py) ------------------------------------


def note_causal(seq, start: int) -> None:
    """From row index `start` on, the sequence computes its tokens itself, with the
    offsets it has now (a later note at the same index replaces this one)."""
    piece = Piece(CAUSAL, start, (seq.pos_offset, seq.pre_until, seq.pre_offset))
    if seq.pieces and seq.pieces[-1].kind == CAUSAL and seq.pieces[-1].start == start:
        seq.pieces[-1] = piece
    else:
        seq.pieces.append(piece)


def note_slots(seq, kind: str, start: int, end: int, src, src_start: int) -> None:
    if end > start:
        seq.pieces.append(Piece(kind, start, src=src, src_start=src_start, end=end))


# -- cost ---------------------------------------------------------------------------


def rebuild_cost(live: list[tuple[object, int]]) -> tuple[int, int]:
    """(KV slots, request rows) a rebuild of these (sequence, KV length) pairs takes at
    most: every causal slot of every row it builds, scratch rows included."""
    slots, rows, seen = 0, 0, set()

    def walk(seq, target: int) -> None:
        nonlocal slots, rows
        rows += 1
        pieces = seq.pieces
        for k, piece in enumerate(pieces):
            end = _piece_end(pieces, k, target)
            if end <= piece.start:
                continue
            if piece.kind == CAUSAL:
                slots += end - piece.start
            elif piece.kind == COPY and id(piece.src) not in seen:
                seen.add(id(piece.src))
                walk(piece.src, _scratch_target(seq, piece.src))

    for seq, target in live:
        walk(seq, target)
    return slots, rows


def _piece_end(pieces: list[Piece], k: int, target: int) -> int:
    piece = pieces[k]
    if piece.kind == CAUSAL:
        end = pieces[k + 1].start if k + 1 < len(pieces) else target
    else:
        end = piece.end
    return min(end, target)


def _scratch_target(consumer, src) -> int:
    """How much of a joined branch's row its joins copied out: what to rebuild."""
    return max(p.src_start + (p.end - p.start) for p in consumer.pieces if p.kind == COPY and p.src is src)


# -- the rebuild --------------------------------------------------------------------


@dataclass
class _Row:
    seq: object
    row: int | None
    target: int
    scratch: bool
    built: int = 0
    index: int = 0  # the next piece
    kept: list = field(default_factory=list)  # scratch: (start, end) ranges a join copied
    consumers: int = 0  # scratch: copy pieces still to read from it


class Rebuild:
    """One unit's rebuild: rows allocated at once, then waves until every row is built."""

    def __init__(self, scheduler, live: list[tuple[object, int]]):
        self.scheduler = scheduler
        self.pool = scheduler.req_to_token_pool
        self.rows: dict[int, _Row] = {}
        self.order: list[_Row] = []
        for seq, target in live:
            # A root's row comes with its first extend (SGLang reuses a row only with KV in it).
            self._add(_Row(seq, self._alloc_row() if seq.pieces[0].kind == ALIAS else None, target, scratch=False))
        self.waves = 0

    def _alloc_row(self) -> int:
        rows = self.pool.alloc_rows(1)
        if rows is None:
            raise RuntimeError("no request rows for a rebuild (checked before it starts)")
        return rows[0]

    def _add(self, r: _Row) -> None:
        self.rows[id(r.seq)] = r
        self.order.append(r)

    def run(self) -> dict[int, int]:
        """Build every row; returns the row of each live sequence (by id)."""
        while True:
            wave, seen = [], set()
            while len(seen) < len(self.order):  # rows spawned while advancing advance too
                for r in [r for r in self.order if id(r) not in seen]:
                    seen.add(id(r))
                    end = self._advance(r)
                    if end is not None:
                        wave.append((r, end))
            self._free_consumed()
            if not wave:
                break
            self._forward(wave)
        stuck = [r for r in self.order if r.built < r.target]
        assert not stuck, f"rebuild stalled at {[(r.built, r.target) for r in stuck]}"
        return {id(r.seq): r.row for r in self.order if not r.scratch}

    def _advance(self, r: _Row) -> int | None:
        """Fill alias and copy pieces whose source is ready; the end of the causal piece
        to compute next, or None (done, or waiting for a source row)."""
        pieces = r.seq.pieces
        while r.built < r.target:
            piece = pieces[r.index]
            end = _piece_end(pieces, r.index, r.target)
            if end <= r.built:
                r.index += 1
                continue
            if piece.kind == CAUSAL:
                return end
            src = self.rows.get(id(piece.src))
            if src is None:
                src = self._spawn(r, piece.src)
            need = piece.src_start + (end - piece.start)
            if src.built < need:
                return None
            table = self.pool.req_to_token
            table[r.row, piece.start:end] = table[src.row, piece.src_start:need]
            if piece.kind == COPY:
                src.kept.append((piece.src_start, need))
                src.consumers -= 1
            r.built, r.index = end, r.index + 1
        return None

    def _spawn(self, consumer: _Row, src) -> _Row:
        """A scratch row for a joined branch, and for its siblings copied in later (they
        alias the same prefix, so they rebuild side by side)."""
        first = None
        for piece in consumer.seq.pieces[consumer.index:]:
            if piece.kind != COPY or id(piece.src) in self.rows:
                continue
            alias = piece.src.pieces[0]
            if piece.src is not src and alias.end > consumer.built:
                continue  # a later block's branch: its prefix is not built yet
            r = _Row(piece.src, self._alloc_row(), _scratch_target(consumer.seq, piece.src), scratch=True)
            r.consumers = sum(1 for p in consumer.seq.pieces if p.kind == COPY and p.src is piece.src)
            self._add(r)
            if piece.src is src:
                first = r
        return first

    def _free_consumed(self) -> None:
        """Scratch rows every join has copied from: free what no join kept, and the row."""
        done = [r for r in self.order if r.scratch and r.consumers == 0 and r.built >= r.target]
        if not done:
            return
        table, alloc = self.pool.req_to_token, self.scheduler.token_to_kv_pool_allocator
        for r in done:
            own_start = r.seq.pieces[0].end if r.seq.pieces[0].kind == ALIAS else 0
            keep = set()
            for lo, hi in r.kept:
                keep.update(range(lo, hi))
            stale = [i for i in range(own_start, r.built) if i not in keep]
            if stale:
                alloc.free(table[r.row, stale].clone())
            self.pool.free_rows([r.row])
            self.order.remove(r)
            del self.rows[id(r.seq)]

    def _forward(self, wave: list[tuple[_Row, int]]) -> None:
        """One extend batch computing each row's next causal piece; its samples are dropped."""
        reqs = [_step_req(r, end) for r, end in wave]
        batch = build_extend_batch(self.scheduler, reqs)
        self.scheduler.run_batch(batch)
        self.waves += 1
        for (r, end), req in zip(wave, reqs, strict=True):
            r.row, r.built = req.kv.req_pool_idx, end


def _step_req(r: _Row, end: int):
    """A request that extends row `r.row` from `r.built` to `end` with the sequence's
    tokens and the offsets its causal piece recorded."""
    owner = r.seq.req
    ids = (list(owner.origin_input_ids) + list(owner.output_ids))[:end]
    params = copy.copy(owner.sampling_params)
    params.max_new_tokens, params.custom_params = 1, None
    req = Req(
        rid=f"{REBUILD_RID_PREFIX}{uuid.uuid4().hex}",
        origin_input_text="",
        origin_input_ids=array("q", ids),
        sampling_params=params,
        eos_token_ids=owner.eos_token_ids,
        vocab_size=owner.vocab_size,
    )
    req.tokenizer = owner.tokenizer
    req.multimodal_inputs = None
    req.skip_radix_cache_insert = True
    req.kv.req_pool_idx = r.row
    req.kv.cache_protected_len = r.built
    req.kv.kv_committed_len = req.kv.kv_allocated_len = r.built
    piece = r.seq.pieces[r.index]
    req.npr = _Offsets(*piece.offsets)
    return req
