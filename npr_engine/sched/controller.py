"""The fork/join controller: one per scheduler process, driven by two hooks.

Each forward step, `before_result` decides which sampled tokens are replaced by
injected ones (forced block open, branch headers, close tags, join header), and
`after_result` reads the new text of every tracked sequence, applies the parser's
events and then, in this order, parks finished branches, forks and joins. Both run
at the step boundary of the non-overlap scheduler, where every running request's
KV is committed up to its last output token. Calm roots and quiet branches are left
out of both until they may need them (npr_engine/sched/calm.py).
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque

from sglang.srt.runtime_context import get_observability, get_parallel

from npr_engine.config import env
from npr_engine.core.detok import IncrementalDecoder, RememberedTexts, concatenative
from npr_engine.core.options import NprOptions
from npr_engine.core.special import SpecialTokens
from npr_engine.grammar import BranchClose, Fork
from npr_engine.metrics import NprMetrics
from npr_engine.sched import staged
from npr_engine.sched.attach import attach_root
from npr_engine.sched.batches import commits_token, park, write_overrides
from npr_engine.sched.calm import UNSEEN, LoudIds, Partition, is_calm, new_text, quiet_steps, resume_decoder
from npr_engine.sched.deltas import note_branch_text
from npr_engine.sched.extend import ExtendQueue
from npr_engine.sched.forking import ForkJoin
from npr_engine.sched.lifecycle import UnitLifecycle
from npr_engine.sched.logprobs import extend_scores_match_steps, note_written, record_injected, score_written
from npr_engine.sched.state import Phase, Seq
from npr_engine.sched.tp import sync_sampled_ids_across_tp

logger = logging.getLogger("npr_engine")

DEBUG_SLOTS = os.environ.get("NPR_DEBUG_SLOTS") == "1"


class Controller:
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.tokenizer = scheduler.tokenizer
        self.special = SpecialTokens(self.tokenizer) if self.tokenizer is not None else None
        self._token_cache: dict[str, list[int]] = {}
        # A decoder's window text, by whether special tokens are skipped.
        self._visible_text = {skip: RememberedTexts(functools.partial(self._visible, skip)) for skip in (False, True)}
        self._concatenative = self.tokenizer is not None and concatenative(self.tokenizer)
        self.default_options = NprOptions.from_custom_params(None)  # most requests' (this process's default schema)
        self._close_counts: dict[tuple[str, str], int] = {}  # (schema, closing text) -> tokens
        self._eos_id = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        vocab = max(len(self.tokenizer), getattr(getattr(scheduler, "model_config", None), "vocab_size", 0) or 0) if (
            self.tokenizer is not None) else 0
        self.loud = LoudIds(self.tokenizer, vocab)  # ids that may start a tag (sched/calm.py)
        self.debug_events: deque | None = deque(maxlen=256) if DEBUG_SLOTS else None
        self.forkjoin = ForkJoin(self)
        # Counted once per model copy, as SGLang counts its own (tensor-parallel rank 0).
        self.metrics = NprMetrics(bool(get_observability().enable_metrics) and get_parallel().attn_tp_rank == 0)
        if get_parallel().tp_size > 1:
            sync_sampled_ids_across_tp()
        self.extends = ExtendQueue(scheduler)
        self.multi_token = env().inject == "extend"
        self.lifecycle = UnitLifecycle(self)
        self._busy: tuple | None = None  # (batch, the requests after_result looks at)
        self.rows = Partition()  # the running batch's calm and other rows (sched/calm.py)
        # A unit's tokens + closing reserve, once per step (_branch_end_reason).
        self._unit_totals: dict[int, int] = {}

    # -- text <-> tokens --------------------------------------------------------------

    def tokens(self, text: str) -> list[int]:
        ids = self._token_cache.get(text)
        if ids is None:
            ids = self._token_cache[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def decoder_for(self, req) -> IncrementalDecoder:
        """A sequence's text exactly as its reply shows it: tags kept, other special
        tokens dropped iff the request skips them (npr_engine/core/special.py)."""
        skip = bool(getattr(req.sampling_params, "skip_special_tokens", True))
        return IncrementalDecoder(self._visible_text[skip], self._concatenative, self.special.whole)

    def _visible(self, skip: bool, ids) -> str:
        return self.decode(self.special.visible(ids, skip))

    def close_count(self, seq: Seq) -> int:
        """len(close_tokens(seq)), without building the list."""
        closing = seq.parser.closing_text()
        key = (seq.schema.name, closing)
        count = self._close_counts.get(key)
        if count is None:
            count = self._close_counts[key] = len(self.close_tokens(seq))
        return count

    def close_tokens(self, seq: Seq) -> list[int]:
        """What a branch still writes to end: its nested block's closing tags, its close
        tag and the schema's tail after it."""
        return self.tokens(seq.parser.closing_text() + seq.schema.branch_close) + self.tokens(seq.schema.branch_tail)

    def writes_at_once(self, seq: Seq) -> bool:
        """Whether injected text of several tokens goes in one extend step.

        A request returning log-probs does so only where the extend's raw rows score
        each injected token as its own step would (logprobs.extend_scores_match_steps);
        otherwise it keeps one token per step, each rescored from its own logits row.
        """
        return self.multi_token and (not seq.req.return_logprob or extend_scores_match_steps(seq))

    def write(self, seq: Seq, tokens) -> list:
        """Append injected tokens to the sequence now; returns the parser's events."""
        _append_injected(seq, tokens)
        text = seq.decoder.push(tokens)
        note_branch_text(seq, text)  # live `branch_deltas` for streaming clients
        return seq.parser.feed(text) if text else []

    def queue_extend(self, seq: Seq) -> None:
        self.lifecycle.opened(seq.unit)
        self.extends.add(seq)

    def is_eos(self, req, token: int) -> bool:
        if req.eos_token_ids and token in req.eos_token_ids:
            return True
        return token == self._eos_id

    # -- attaching state to new root requests ------------------------------------------

    def attach(self, req) -> Seq | None:
        """The request's NPR state, attached on first sight (a new root request)."""
        if "npr" not in req.__dict__:
            req.npr = attach_root(self, req)
        return req.npr

    # -- before the stock result processing: injected tokens ---------------------------

    def before_result(self, batch, result) -> None:
        mode = batch.forward_mode
        if not (mode.is_decode() or mode.is_extend()) or result.next_token_ids is None:
            return
        if result.copy_done is not None:
            result.copy_done.synchronize()
        overrides: list[tuple[int, int]] = []
        sampled = None  # read from the device once per step, when needed (a list, or calm.SampledIds)
        decode = mode.is_decode()
        self._unit_totals.clear()
        busy: list = []  # the requests after_result looks at (every tracked one but the calm)
        closing: list[int] = []  # rows of branches in their closing step
        reqs = batch.reqs
        rows = None
        if decode:
            rows = self.rows.next_step(batch)
            if rows.quiet_blocks:  # a quiet branch's id may be replaced (EOS, budget): screened now
                sampled = self.rows.screen(rows, result.next_token_ids, self.loud)  # woken rows join `other`
        for i in range(len(reqs)) if rows is None else sorted(rows.other):
            req = reqs[i]
            seq = req.__dict__.get("npr", UNSEEN)
            if seq is None:
                continue  # untracked (`parallel: false`, say): nothing to do, ever
            if seq is UNSEEN:
                if not commits_token(req):
                    continue
                seq = self.attach(req)
                if seq is None:
                    if rows is not None:
                        rows.other.discard(i)
                    continue
            elif seq.calm:  # calm since the last step's after_result
                if decode:
                    if sampled is None and seq.block is None:  # screened in after_result
                        rows.other.discard(i)
                        rows.add_calm(i, seq)
                        continue
                    if sampled is None:
                        sampled = result.next_token_ids.tolist()
                    if not self.loud.table[sampled[i]]:
                        rows.other.discard(i)
                        rows.add_calm(i, seq)
                        continue
                resume_decoder(req)  # a loud id at once, or an extend (a retracted one's prefill)
            busy.append(req)
            if not commits_token(req):
                continue
            req._npr_prev_len = len(req.output_ids)
            if not seq.forced and seq.block is None:
                continue  # a root with nothing to inject: its sampled token stands
            if sampled is None:
                sampled = result.next_token_ids.tolist()
            if seq.phase is Phase.CLOSING:
                closing.append(i)
            token = self._injected_token(seq, sampled[i])
            if token is not None:
                overrides.append((i, token))
        self._busy = (batch, busy)
        if not decode:
            score_written(batch, result)  # injected tokens an extend step computed
        if sampled is None:
            return
        record_injected(self, batch, result, sampled, overrides, closing)  # trace offsets, log-probs
        if overrides:
            write_overrides(self.scheduler, batch, result, overrides)

    def _injected_token(self, seq: Seq, sampled: int) -> int | None:
        if seq.phase is Phase.CLOSING:
            return None  # this token is dropped after the step
        if not seq.forced and seq.is_branch and seq.close_reason is None:
            reason = self._branch_end_reason(seq, sampled)
            if reason is not None:
                seq.close_reason = reason
                self._unit_totals.pop(id(seq.unit), None)  # its closing reserve changes
                # A nested block (a joined summary, or sequential text) is closed first;
                # the tail follows once the parser has seen the close (after_result).
                seq.forced.extend(self.tokens(seq.parser.closing_text() + seq.schema.branch_close))
        if seq.forced:
            seq.injected += 1
            if seq.close_reason is not None:
                self._unit_totals.pop(id(seq.unit), None)  # a close tag's token is written
            return seq.forced.popleft()
        return None

    def _branch_end_reason(self, seq: Seq, sampled: int) -> str | None:
        root = seq.unit.root.req
        if self.is_eos(seq.req, sampled) and not root.sampling_params.ignore_eos:
            return "eos"
        limit = seq.options.max_path_tokens
        if limit is not None and seq.own_tokens() + self.close_count(seq) >= limit:
            return "budget"
        total = self._unit_totals.get(id(seq.unit))
        if total is None:  # once per unit and step, unless a member's closing changed it
            fj = self.forkjoin
            total = self._unit_totals[id(seq.unit)] = fj.unit_tokens(seq.unit) + fj.closing_reserve(seq.unit)
        if total >= root.sampling_params.max_new_tokens:
            return "length"
        return None

    # -- after the stock result processing: parse, park, fork, join --------------------

    def after_result(self, batch, result) -> None:
        mode = batch.forward_mode
        if not (mode.is_decode() or mode.is_extend()):
            return
        to_park: list[Seq] = []
        to_fork: list[tuple[Seq, tuple[str, ...]]] = []
        to_extend: list[Seq] = []
        stepped: list[Seq] = []
        to_stage: list[Seq] = []
        roots: list[Seq] = []  # roots that committed a token: calm again? (is_calm)
        busy, self._busy = self._busy, None
        reqs = busy[1] if busy is not None and busy[0] is batch else list(batch.reqs)
        rows = self.rows.of_step(batch) if mode.is_decode() else None
        if rows is not None:  # a step with calm roots only was not screened before
            for req in self.rows.screen_committed(rows, self.loud):
                req._npr_prev_len = len(req.output_ids) - 1
                reqs.append(req)
        quiet = rows.quiet_blocks.values() if rows is not None else ()
        if not reqs and not quiet:
            return  # every row calm: nothing happened to any sequence
        for req in reqs:
            seq = req.__dict__.get("npr")  # seq_of(req), inlined: this loop runs per request
            if seq is None:
                continue
            prev = req.__dict__.pop("_npr_prev_len", None)
            if seq.phase is Phase.EXTEND:
                self.extends.done(seq)
                self.lifecycle.closed(seq.unit)
            if prev is None or len(req.output_ids) <= prev:
                continue
            if seq.phase is Phase.CLOSING:
                del req.output_ids[prev:]  # sampled after the close tag: not part of the text
                seq.phase = Phase.PARKED
                to_park.append(seq)
                continue
            if seq.stage is not None:  # a staged join step (npr_engine/sched/staged.py)
                seq.decoder.push(req.output_ids[prev:])
                if req.finished():
                    staged.abandon(self.forkjoin, seq)
                else:
                    to_stage.append(seq)
                continue
            if seq.block is not None:
                stepped.append(seq)  # a branch's step (parallel-rate counters)
            else:
                roots.append(seq)
            if req.finished():
                continue
            if seq.forced and self._write_forced_now(seq):
                to_extend.append(seq)
            text = new_text(self.loud, seq, req.output_ids[prev:])
            if not text:
                events = ()
            else:
                note_branch_text(seq, text)
                events = seq.parser.feed(text)
            for event in events:
                if isinstance(event, Fork):
                    self._separate(seq, event.plan_items, to_extend)
                elif isinstance(event, BranchClose) and seq.is_branch:
                    seq.path.finish = seq.close_reason or "close"
                    seq.close_len = len(req.origin_input_ids) + len(req.output_ids)
                    tail = self.tokens(seq.schema.branch_tail)
                    seq.forced.extend(tail)
                    seq.path.tail = len(tail)
                    seq.tailing = True
            if seq.tailing and not seq.forced:
                seq.phase = Phase.CLOSING  # its close tag and tail are written
            elif seq.pending_fork is not None and not seq.forced:
                to_fork.append((seq, seq.pending_fork))
                seq.pending_fork = None
        self.forkjoin.count_parallel(stepped, to_park, quiet)
        self.forkjoin.park(batch, to_park)
        forked = self.forkjoin.fork_step(to_fork) if to_fork else []
        # Written tokens that no fork took over (a fork's branches compute them).
        extending = [s for s in to_extend if s.phase is Phase.ACTIVE and not s.req.finished()]
        park(batch, [s.req for s in forked + extending])  # one filter of the batch
        for seq in extending:
            self.queue_extend(seq)
        if to_park or to_stage:
            self.forkjoin.join_step(batch, [s.block for s in to_park], to_stage)
        for seq in roots:
            seq.calm = is_calm(self.loud, seq)
        units: dict = {}
        for seq in stepped:
            steps = quiet_steps(self, seq, units)
            if steps:
                seq.calm, seq.wake_step = True, self.rows.step + 1 + steps

    def _separate(self, seq: Seq, plan_items: tuple[str, ...], to_extend: list[Seq]) -> None:
        """At a fork point: write the schema's separator, then fork (once it is written,
        one token per step, when the sequence injects one token per step)."""
        sep = self.tokens(seq.schema.fork_separator)
        if sep and self.writes_at_once(seq):
            self.write(seq, sep)
            if seq not in to_extend:
                to_extend.append(seq)  # a fork that falls back leaves it to an extend step
        elif sep:
            seq.forced.extend(sep)
        seq.pending_fork = plan_items
        seq.block_sep = len(sep)

    def _write_forced_now(self, seq: Seq) -> bool:
        """Move a forced block open (all but its first token, already injected) into the
        output at once; close tags stay one per step (the branch is about to end)."""
        if not seq.forced or seq.close_reason is not None or not self.writes_at_once(seq):
            return False
        req = seq.req
        if len(req.output_ids) + len(seq.forced) > req.sampling_params.max_new_tokens:
            return False
        _append_injected(seq, list(seq.forced))
        seq.forced.clear()
        return True


def _append_injected(seq: Seq, tokens: list[int]) -> None:
    seq.req.output_ids.extend(tokens)
    seq.injected += len(tokens)
    note_written(seq, len(tokens))


_controllers: dict[int, Controller] = {}


def controller_for(scheduler) -> Controller:
    ctl = _controllers.get(id(scheduler))
    if ctl is None:
        ctl = _controllers[id(scheduler)] = Controller(scheduler)
    return ctl


def controller_for_any() -> Controller | None:
    """The controller of this process's scheduler (one scheduler per process)."""
    return next(iter(_controllers.values()), None)

