"""Which sequences need the controller each step, and which text it must decode.

Most running requests are roots writing plain text. For them a step needs nothing
from us unless the sampled id may start a tag:

- `LoudIds`: the ids whose spelling may hold a tag's first character (special tokens
  always), for every schema this server knows; `new_text` decodes a sequence's new ids
  only where a tag can start, or where live text is wanted (streaming branch deltas).
- A *calm* root (`is_calm`: outside any tag, nothing pending, no block yet) is skipped
  by the controller until it samples a loud id (`Rows.wake`), its decoder then resumed
  after the ids it never saw (`resume_decoder`).
- `Rows`: a decode batch's partition into calm and other tracked rows, so a step looks
  at the others only.
"""

from __future__ import annotations

from npr_engine.config import env
from npr_engine.core.detok import DECODE_CONTEXT
from npr_engine.core.special import loud_ids
from npr_engine.grammar.parser import ParserState
from npr_engine.grammar.schemas import get_schema, known_schemas
from npr_engine.sched.state import Phase, Seq

UNSEEN = object()  # a request the controller has not looked at yet
# Parser states where only tags matter (a plan item's text and sequentially decoded
# paths are read in PLAN and FORKED).
_TAG_ONLY_STATES = frozenset({ParserState.OUTSIDE, ParserState.OPEN, ParserState.SUMMARY,
                              ParserState.AFTER_SUMMARY, ParserState.CLOSED})


class LoudIds:
    """Built once per controller: it reads the whole vocabulary."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self.chars = frozenset(c for name in {*known_schemas(), env().tag_schema} for c in _first_chars(name))
        self.ids = loud_ids(tokenizer, self.chars) if tokenizer is not None else None
        self.table = _id_table(self.ids, vocab_size) if self.ids is not None else None  # a byte per id
        self._covers: dict[str, bool] = {}  # by schema name

    def covers(self, schema) -> bool:
        """Whether the loud ids cover every tag of `schema` (a schema file of the
        request's own may start its tags with other characters)."""
        known = self._covers.get(schema.name)
        if known is None:
            known = self._covers[schema.name] = self.ids is not None and _schema_first_chars(schema) <= self.chars
        return known


def new_text(loud: LoudIds, seq: Seq, new: list[int]) -> str:
    """The sequence's newly stable text; "" without decoding when it cannot matter:
    outside any tag, with no partial tag pending, no live text wanted (a streaming
    unit's branch deltas) and no new id that could start a tag."""
    parser, decoder = seq.parser, seq.decoder
    if (parser.state in _TAG_ONLY_STATES and not parser.pending and decoder.settled
            and not (seq.block is not None and seq.unit.root.req.stream)):
        if loud.covers(seq.schema) and loud.ids.isdisjoint(new):
            decoder.skip(new)
            return ""
    return decoder.push(new)


def is_calm(loud: LoudIds, seq: Seq) -> bool:
    """A root outside any tag that has nothing pending and never opened a block: until
    it samples an id that may start a tag, its steps need nothing from us."""
    parser = seq.parser
    return (seq.block is None and seq.phase is Phase.ACTIVE and not seq.forced and seq.stage is None
            and seq.pending_fork is None and not seq.unit.trace.blocks and parser.state is ParserState.OUTSIDE
            and not parser.pending and seq.decoder.settled and not seq.req.finished() and loud.covers(seq.schema))


def resume_decoder(req) -> None:
    """A calm root leaves calm: its decoder goes on after the ids it never saw."""
    req.npr.calm = False
    end = len(req.output_ids)
    req.npr.decoder.resume(req.output_ids[max(end - DECODE_CONTEXT, 0):end])


class Rows:
    """Which rows of a decode batch the controller looks at each step: `calm` roots (one
    id check against the loud ids) and `other` tracked ones; untracked rows in neither.

    NOTE: valid while `batch.reqs` is the same list object: SGLang 0.5.23 replaces the
    list whenever the batch changes (filter_batch, merge_batch) and never edits it in
    place. Holding the list keeps its id from being reused. Rows move between the two
    sets as they wake (`wake`) and calm down (seen calm in `other`).
    """

    __slots__ = ("reqs", "calm", "other")

    def __init__(self, reqs: list) -> None:
        self.reqs = reqs
        self.calm: set[int] = set()
        self.other: set[int] = {i for i, req in enumerate(reqs) if req.__dict__.get("npr", UNSEEN) is not None}

    def needing_work(self, reqs) -> list | None:
        """The requests of `reqs` in `other`, if this partition describes exactly that
        list of requests (the positions hook gets a copy of it), else None."""
        if len(self.reqs) != len(reqs) or self.reqs != reqs:
            return None
        return [self.reqs[i] for i in self.other]

    def wake(self, table: bytes, sampled: list[int]) -> list[int]:
        """Calm rows whose sampled id may start a tag, moved to `other`."""
        woken = [i for i in self.calm if table[sampled[i]]]
        self.calm.difference_update(woken)
        self.other.update(woken)
        return woken


def _id_table(ids: frozenset[int], size: int) -> bytes:
    """1 at each id of `ids` (ids past `size` too: the model's vocabulary may be padded)."""
    table = bytearray(max(size, max(ids, default=0) + 1) + 1024)
    for i in ids:
        table[i] = 1
    return bytes(table)


def _schema_first_chars(schema) -> frozenset[str]:
    return frozenset(tag[0] for tag in (*schema.tags().values(), schema.header_prefix) if tag)


def _first_chars(name: str) -> frozenset[str]:
    try:
        return _schema_first_chars(get_schema(name))
    except (ValueError, OSError):
        return frozenset()  # a bad --tag-schema is reported by the launcher
