"""Which sequences need the controller each step, and which text it must decode.

Most running requests are roots writing plain text. For them a step needs nothing
from us unless the sampled id may start a tag:

- `LoudIds`: the ids whose spelling may hold a tag's first character (special tokens
  always), for every schema this server knows; `new_text` decodes a sequence's new ids
  only where a tag can start, or where live text is wanted (streaming branch deltas).
- A *calm* root (`is_calm`: only tags matter, nothing pending) is skipped
  by the controller until it samples a loud id (`Rows.wake`), its decoder then resumed
  after the ids it never saw (`resume_decoder`). Its ids are never replaced, so a step
  whose calm rows are all roots screens them after SGLang's own processing, from the
  output ids SGLang appended (`Partition.screen_committed`: no device read of ours).
- A *quiet* branch (`quiet_steps`: writing path text outside any tag, nothing pending,
  no live text wanted) is skipped the same way, and also woken at the first decode step
  where its budget or its unit's token limit could end it (`Seq.wake_step`), or when
  its unit forks or joins (`Partition.wake_unit`: the unit's growth per step changes).
- `Rows`: a decode batch's partition into calm and other tracked rows, so a step looks
  at the others only; the quiet branches of each block are counted for its parallel-rate
  counters.
"""

from __future__ import annotations

import operator

import numpy as np

from npr_engine.config import env
from npr_engine.core.detok import DECODE_CONTEXT
from npr_engine.core.special import loud_ids
from npr_engine.grammar.parser import ParserState
from npr_engine.grammar.schemas import get_schema, known_schemas
from npr_engine.sched.state import Phase, Seq, live_count

UNSEEN = object()  # a request the controller has not looked at yet
_LAST = operator.itemgetter(-1)
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
        # The same table as an array, to screen a whole step's ids at once (`loud_rows`).
        self.array = np.frombuffer(self.table, dtype=np.uint8).astype(bool) if self.table is not None else None
        self._covers: dict[str, bool] = {}  # by schema name

    def loud_rows(self, host_ids: np.ndarray) -> list[int]:
        """Rows of a step whose sampled id (on the host) may start a tag."""
        return np.flatnonzero(self.array[host_ids]).tolist()

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
    """A root where only tags matter (outside any block, or in a joined block's summary
    and after it) with nothing pending: until it samples an id that may start a tag,
    its steps need nothing from us."""
    parser = seq.parser
    return (seq.block is None and seq.phase is Phase.ACTIVE and not seq.forced and seq.stage is None
            and seq.pending_fork is None and parser.state in _TAG_ONLY_STATES and not parser.pending
            and seq.decoder.settled and not seq.req.finished() and loud.covers(seq.schema))


def quiet_steps(ctl, seq: Seq, units: dict) -> int:
    """For a branch that just committed a token: how many of the next decode steps need
    nothing from the controller (0: look at it every step).

    They must not reach the step where its budget or its unit's `max_new_tokens` would
    end it: its own tokens grow by one a step, the unit's tokens (with the closing
    reserve) by at most one per live branch (forks and joins wake the unit). `units`:
    what is the same for every branch of a unit, by unit, for one step's calls."""
    req, parser = seq.req, seq.parser
    if (seq.forced or seq.close_reason is not None or seq.tailing or seq.pending_fork is not None
            or seq.phase is not Phase.ACTIVE or seq.child is not None or seq.stage is not None
            or parser.state not in _TAG_ONLY_STATES or parser.pending or not seq.decoder.settled
            or seq.unit.root.req.stream or req.finished() or not ctl.loud.covers(seq.schema)):
        return 0
    steps = units.get(seq.unit)
    if steps is None:
        steps = units[seq.unit] = _unit_quiet_steps(ctl, seq)
    steps -= 1  # one step of margin on the unit's bound
    limit = seq.options.max_path_tokens
    if limit is not None:
        # Exact: its own tokens grow by one a step, so the first step whose sampled token
        # would reach its budget (+1: that token is not in output_ids yet) is its wake step.
        steps = min(steps, limit - ctl.close_count(seq) - seq.own_tokens())
    return steps if steps > 1 else 0


def _unit_quiet_steps(ctl, seq: Seq) -> int:
    """The decode steps before the unit's `max_new_tokens` could end `seq` (0 if an EOS
    must wake its branches: it would close them)."""
    table = ctl.loud.table
    if not all(table[e] for e in seq.req.eos_token_ids or ()) or (
            ctl._eos_id is not None and not table[ctl._eos_id]):
        return 0  # (branches carry their root's EOS ids)
    fj = ctl.forkjoin
    steps = seq.unit.root.req.sampling_params.max_new_tokens - fj.unit_tokens(seq.unit) - fj.closing_reserve(seq.unit)
    return -(-steps // live_count(seq.unit)) if steps > 0 else 0


def resume_decoder(req, unread: int = 0) -> None:
    """A calm root or quiet branch leaves calm: its decoder goes on after the ids it never
    saw (all but the last `unread`, which it reads next)."""
    req.npr.calm = False
    end = len(req.output_ids) - unread
    req.npr.decoder.resume(req.output_ids[max(end - DECODE_CONTEXT, 0):end])


class Rows:
    """Which rows of a decode batch the controller looks at each step: `calm` rows (one
    id check against the loud ids; quiet branches also an alarm at their wake step) and
    `other` tracked ones; untracked rows in neither.

    NOTE: valid while `batch.reqs` is the same list object: SGLang 0.5.23 replaces the
    list whenever the batch changes (filter_batch, merge_batch) and never edits it in
    place. Holding the list keeps its id from being reused. Rows move between the two
    sets as they wake (`wake`) and calm down (`add_calm`). `cache` holds what hooks derive
    from the partition's requests (their position shifts, the rows that are streamed).
    """

    __slots__ = ("reqs", "calm", "other", "alarms", "quiet_blocks", "cache", "screened", "outputs")

    def __init__(self, reqs: list, step: int) -> None:
        self.reqs = reqs
        self.calm: set[int] = set()
        self.other: set[int] = set()
        self.alarms: dict[int, list[int]] = {}  # decode step -> quiet rows to wake then
        self.quiet_blocks: dict[int, list] = {}  # id(block) -> [block, its quiet rows]
        self.cache: dict = {}
        self.screened = 0  # the last decode step whose ids were screened (Partition)
        self.outputs: dict[int, object] = {}  # calm root rows -> their output ids (SGLang's list)
        for i, req in enumerate(reqs):
            seq = req.__dict__.get("npr", UNSEEN)
            if seq is None:
                continue
            if seq is not UNSEEN and seq.calm:
                if seq.block is None or seq.wake_step > step:
                    self.add_calm(i, seq)
                    continue
                resume_decoder(req)  # its alarm is due
            self.other.add(i)

    def add_calm(self, i: int, seq: Seq) -> None:
        self.calm.add(i)
        if seq.block is None:
            self.outputs[i] = seq.req.output_ids
        else:
            self.alarms.setdefault(seq.wake_step, []).append(i)
            quiet = self.quiet_blocks.get(id(seq.block))
            if quiet is None:
                self.quiet_blocks[id(seq.block)] = [seq.block, 1]
            else:
                quiet[1] += 1

    def describes(self, reqs) -> bool:
        return reqs is self.reqs or (len(self.reqs) == len(reqs) and self.reqs == reqs)

    def wake(self, loud_rows: list[int], step: int, unread: int = 0) -> None:
        """Calm rows whose sampled id may start a tag (of `loud_rows`), or whose alarm is
        due: moved to `other`, their decoders resumed (`unread`: committed ids they are
        yet to read, resume_decoder)."""
        calm = self.calm
        woken = {i for i in loud_rows if i in calm}
        due = self.alarms.pop(step, None)
        if due:
            woken.update(i for i in due if i in self.calm)  # (a row woken before may be calm again)
        if not woken:
            return
        self.calm.difference_update(woken)
        self.other.update(woken)
        for i in woken:
            req = self.reqs[i]
            block = req.npr.block
            if block is None:
                del self.outputs[i]
            else:
                quiet = self.quiet_blocks[id(block)]
                quiet[1] -= 1
                if not quiet[1]:
                    del self.quiet_blocks[id(block)]
            resume_decoder(req, unread)


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


class Partition:
    """The controller's view of the running batch: its `Rows`, kept while its request
    list is the same object, and the decode-step count quiet branches wake by."""

    def __init__(self) -> None:
        self.rows: Rows | None = None
        self.step = 0  # decode steps so far
        self.calm_row_steps = 0  # rows skipped as calm, summed over decode steps (internal state)

    def next_step(self, batch) -> Rows:
        """A decode step's result: the batch's partition."""
        self.step += 1
        rows = self.rows
        if rows is None or rows.reqs is not batch.reqs:
            rows = self.rows = Rows(batch.reqs, self.step)
        return rows

    def screen(self, rows: Rows, ids, loud: LoudIds) -> SampledIds:
        """A decode step with calm rows: the sampled ids read once, the calm rows they (or
        an alarm) wake moved to `other`."""
        host = ids.numpy() if ids.device.type == "cpu" else ids.cpu().numpy()
        rows.wake(loud.loud_rows(host), self.step)
        rows.screened = self.step
        self.calm_row_steps += len(rows.calm)
        return SampledIds(host)

    def screen_committed(self, rows: Rows, loud: LoudIds) -> list:
        """A decode step whose calm rows are all roots is not screened before SGLang's
        own processing (a calm root's id is never replaced): its committed ids are
        screened after it instead, from the output SGLang has appended them to (its own
        host copy, no read of ours). Returns the woken requests; their last id unread."""
        if rows.screened == self.step:
            return []
        rows.screened = self.step
        outputs, table = rows.outputs, loud.table
        loud_rows = []
        if not loud.ids.isdisjoint(map(_LAST, outputs.values())):  # loops in C: this runs every step
            reqs = rows.reqs
            loud_rows = [i for i, out in outputs.items() if table[out[-1]] and not reqs[i].finished()]
            rows.wake(loud_rows, self.step, unread=1)
        self.calm_row_steps += len(rows.calm)
        return [rows.reqs[i] for i in loud_rows]

    def of(self, reqs) -> Rows | None:
        """The partition, if it describes exactly `reqs` (a hook's copy of the running
        batch's request list), else None."""
        rows = self.rows
        return rows if rows is not None and rows.describes(reqs) else None

    def of_step(self, batch) -> Rows | None:
        """The partition of the decode step `batch` just ran (None once it was dropped)."""
        rows = self.rows
        return rows if rows is not None and rows.reqs is batch.reqs else None

    def wake_unit(self, branches) -> None:
        """A fork or join changes how fast a unit grows: its quiet branches (of
        `branches`, its live ones) are looked at from the next step on."""
        for seq in branches:
            if seq.calm:
                seq.wake_step = 0
                self.rows = None  # rebuilt, with these rows in `other`


class SampledIds:
    """A step's sampled ids, on the host already: a list once indexed.

    NOTE: on the CPU `host` is a view of the result's ids, which the controller writes
    its overrides into last, after every read of these."""

    __slots__ = ("host", "ids")

    def __init__(self, host) -> None:
        self.host, self.ids = host, None

    def __getitem__(self, i: int) -> int:
        if self.ids is None:
            self.ids = self.host.tolist()
        return self.ids[i]
