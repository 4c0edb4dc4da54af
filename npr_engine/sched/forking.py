"""Fork and join as scheduler events: KV rows, request objects, batches, trace."""

from __future__ import annotations

import copy
import itertools
import logging
import operator
import uuid
from array import array
from collections import Counter

from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.mem_cache.common import release_kv_cache

from npr_engine.core.detok import DECODE_CONTEXT
from npr_engine.core.trace import PathTrace
from npr_engine.grammar import TagParser
from npr_engine.sched import staged
from npr_engine.sched.batches import Injections, park
from npr_engine.sched.extend import extend_tokens
from npr_engine.sched.fallback import fallback_reason
from npr_engine.sched.kv import alias_prefixes, join_rows
from npr_engine.sched.logprobs import inherit_logprob_request, note_join_token, splice_branch_logprobs
from npr_engine.sched.rebuild import ALIAS, COPY, note_causal, note_slots
from npr_engine.sched.state import Block, Phase, Seq, Unit, close_len, live_branches, subtree_tokens

logger = logging.getLogger("npr_engine")

BRANCH_RID_PREFIX = "npr-branch-"
_BLOCK = operator.attrgetter("block")
# SGLang must never finish a branch by length before our own budget does.
_BRANCH_LENGTH_MARGIN = 64


class ForkJoin:
    def __init__(self, controller):
        self.ctl = controller
        self.scheduler = controller.scheduler
        # Branch rids: unique per process (one uuid), then a counter (no uuid per branch).
        self._rids = map(f"{BRANCH_RID_PREFIX}{uuid.uuid4().hex[:16]}-{{:x}}".format, itertools.count())

    # -- accounting ---------------------------------------------------------------------

    def unit_tokens(self, unit: Unit) -> int:
        """Completion tokens of the whole unit: the root's plus every unjoined branch's."""
        return subtree_tokens(unit.root)

    def closing_reserve(self, unit: Unit) -> int:
        """Tokens the live branches still add at least: their close tags (or what is left
        of them), plus one each for the token being decided in the current step."""
        count = self.ctl.close_count
        return sum((len(s.forced) if s.close_reason else count(s)) + 1 for s in live_branches(unit.root))

    def count_parallel(self, stepped: list[Seq], closing: list[Seq], quiet=()) -> None:
        """Parallel-rate counters: a branch token counts as parallel if a sibling also ran.
        `stepped`, `closing`: branches; `quiet`: [block, how many of its quiet branches
        stepped] (calm.Rows)."""
        decoded = Counter(map(_BLOCK, stepped))  # (C loops: these run every step)
        ran = decoded + Counter(map(_BLOCK, closing)) if closing else decoded.copy()
        for block, n in quiet:
            if block in ran:  # beside members that ran as others
                decoded[block] += n
                ran[block] += n
            else:  # only quiet members ran (most blocks, most steps)
                block.trace.decoded += n
                if n > 1:
                    block.trace.decoded_with_sibling += n
        for block, n in decoded.items():  # once per block, not per branch
            trace = block.trace
            trace.decoded += n
            if ran[block] > 1:
                trace.decoded_with_sibling += n

    # -- park ---------------------------------------------------------------------------

    def park(self, batch, seqs: list[Seq]) -> None:
        for seq in seqs:
            seq.path.tokens = seq.own_tokens()
            self._debug("park", seq=seq.req.rid, row=seq.req.kv.req_pool_idx, kv=seq.req.kv.kv_committed_len)
        park(batch, [s.req for s in seqs])

    # -- fork ---------------------------------------------------------------------------

    def fork_step(self, forks: list[tuple[Seq, tuple[str, ...]]]) -> list[Seq]:
        """A step's forks (each, or its fallback to sequential text); returns the
        sequences that forked. The caller parks them (one filter of the batch). Their
        rows are taken and their prefixes aliased at once, not a block at a time."""
        planned = []
        rows_needed = 0
        for seq, plan_items in forks:
            plan = self._plan(seq, plan_items, rows_needed, len(planned))
            if plan is not None:
                planned.append((seq, *plan))
                rows_needed += len(plan[0])
        if not planned:
            return []
        pool = self.scheduler.req_to_token_pool
        rows = iter(pool.alloc_rows(rows_needed))
        opened = []
        for seq, ids, block_trace in planned:
            opened.append((seq, ids, block_trace, [next(rows) for _ in ids]))
        alias_prefixes(pool.req_to_token, [(s.req.kv.req_pool_idx, r, s.req.kv.kv_committed_len)
                                           for s, _, _, r in opened])
        out = Injections()  # branches injecting one token per step: one merge for the step
        for seq, ids, block_trace, branch_rows in opened:
            self._open(seq, ids, block_trace, branch_rows, out)
        out.flush(self.scheduler)
        return [seq for seq, *_ in opened]

    def _plan(self, seq: Seq, plan_items: tuple[str, ...], rows_taken: int, forks_taken: int):
        """The fork's path ids and trace, or None where it falls back (traced as such)."""
        width = min(len(plan_items) if seq.schema.plan_open else seq.options.paths, seq.options.max_paths)
        width = max(width, 1)
        ids = seq.schema.path_ids(plan_items, width)
        reason = fallback_reason(self, seq, ids, rows_taken, forks_taken)
        block_trace = seq.unit.trace.new_block(
            parent_block=seq.block.trace.id if seq.is_branch else None,
            parent_path=seq.path.index if seq.is_branch else None,
            depth=seq.depth + 1,
            fork_offset=len(seq.req.output_ids) - seq.fork_out_len,
            width=width,
            fallback=reason,
            separator=seq.block_sep,
        )
        seq.block_sep = 0
        if seq.is_branch:
            seq.path.children.append(block_trace)
        if reason is not None:
            # The parser keeps reading the block as sequential text.
            self.ctl.metrics.fallback(reason)
            return None
        return ids, block_trace

    def _open(self, seq: Seq, ids: list[str], block_trace, rows: list[int], out: Injections) -> None:
        """The block's branches on their rows (prefix aliased already), started."""
        parent = seq.req
        prefix_len = parent.kv.kv_committed_len
        if not seq.is_branch and seq.unit.causal_len is None:
            seq.unit.causal_len = prefix_len
        # Parent tokens without KV: the fork token, or a whole forced block open.
        uncommitted = extend_tokens(parent)
        assert uncommitted >= 1, "not at a step boundary"
        block = Block(trace=block_trace, parent=seq, prefix_len=prefix_len, uncommitted=uncommitted,
                      fork_len=len(parent.output_ids))
        for i, row in enumerate(rows, start=1):
            block.branches.append(self._make_branch(seq, block, i, row, ids[i - 1]))
        block_trace.paths = [b.path for b in block.branches]
        seq.phase, seq.child = Phase.FORKED, block
        seq.unit.blocks_open += 1
        self.ctl.lifecycle.opened(seq.unit)
        self.ctl.metrics.forked(len(rows))
        self.ctl.rows.wake_unit(live_branches(seq.unit.root))
        self._start_branches(block, out)
        if self.ctl.debug_events is not None:
            pool = self.scheduler.req_to_token_pool
            self._debug("fork", rid=parent.rid, uncommitted=uncommitted,
                        prefix=pool.req_to_token[parent.kv.req_pool_idx, :prefix_len].tolist(),
                        rows=list(rows), branch_prefixes=[pool.req_to_token[r, :prefix_len].tolist() for r in rows])

    def _start_branches(self, block: Block, out: Injections) -> None:
        """Each branch computes the parent's uncommitted tokens and its header: in one
        extend step, or (one token per step) as a decode-ready request."""
        if self.ctl.writes_at_once(block.parent):
            for branch in block.branches:
                header = list(branch.forced)
                branch.forced.clear()
                self.ctl.write(branch, header)  # (a new parser's first text: read once, TagParser.feed_tags)
                self.ctl.queue_extend(branch)
            return
        assert block.uncommitted == 1, "one-token-per-step injection forks at a sampled token"
        pending = block.parent.req.output_ids[-1]
        for b in block.branches:
            out.add(b.req, pending)

    def _make_branch(self, parent_seq: Seq, block: Block, index: int, row: int, path_id: str) -> Seq:
        parent = parent_seq.req
        params = copy.copy(parent.sampling_params)
        # User stops apply outside branches only; EOS and budgets are ours to enforce.
        params.stop_strs, params.stop_str_max_len = [], 0
        params.stop_regex_strs, params.stop_regex_max_len = [], 0
        params.stop_token_ids = None
        params.ignore_eos = True
        params.max_new_tokens = parent_seq.unit.root.req.sampling_params.max_new_tokens + _BRANCH_LENGTH_MARGIN
        if params.sampling_seed is not None:
            # Siblings must not draw the same random stream.
            params.sampling_seed = (params.sampling_seed + 7919 * index) % (2**63)
        if parent_seq.options.branch_sampling is not None:
            # On the copy only: the parent resumes with its own values after the join.
            parent_seq.options.branch_sampling.apply(params)
        custom = dict(parent.sampling_params.custom_params or {})
        custom["npr_branch"] = {"path": index, "depth": parent_seq.depth + 1}
        params.custom_params = custom
        req = Req(
            rid=next(self._rids),
            origin_input_text="",
            origin_input_ids=parent.origin_input_ids,
            sampling_params=params,
            eos_token_ids=parent.eos_token_ids,
            vocab_size=parent.vocab_size,
            lora_id=parent.lora_id,
            custom_logit_processor=parent.custom_logit_processor,
        )
        req.output_ids = array("q", parent.output_ids)
        req.tokenizer = parent.tokenizer
        req.multimodal_inputs = None
        req.skip_radix_cache_insert = True
        req.kv.req_pool_idx = row
        # NOTE: the protected length is what keeps a branch from ever freeing the
        # parent's slots; the parent's own tree lock keeps the prompt alive.
        req.kv.cache_protected_len = block.prefix_len
        req.kv.kv_committed_len = req.kv.kv_allocated_len = block.prefix_len
        schema = parent_seq.schema
        seq = Seq(
            req=req, unit=parent_seq.unit, options=parent_seq.options, schema=schema,
            parser=TagParser.fresh(schema, "branch"), decoder=self.ctl.decoder_for(req),
            depth=parent_seq.depth + 1, block=block, path=PathTrace(index=index),
            fork_out_len=len(parent.output_ids),
            # Training positions: every path restarts at pos(fork point) + 1, the fork
            # separator's own positions (DESIGN.md section 2).
            pos_offset=parent_seq.pos_offset + block.trace.separator,
            pre_until=block.prefix_len + block.uncommitted, pre_offset=parent_seq.pos_offset,
        )
        note_slots(seq, ALIAS, 0, block.prefix_len, parent_seq, 0)
        note_causal(seq, block.prefix_len)
        seq.forced.extend(self.ctl.tokens(schema.header(path_id)))
        req.npr = seq
        inherit_logprob_request(parent, req)
        return seq

    # -- join ---------------------------------------------------------------------------

    def join_step(self, batch, blocks: list[Block], to_stage: list[Seq]) -> None:
        """A step's joins (blocks whose branches may all be parked) and staged-join
        stages, their frees in one group as SGLang frees a step's (each free copies the
        allocator's free list)."""
        allocator = self.scheduler.token_to_kv_pool_allocator
        out = Injections()  # the step's staged parents and resumed ones, back in the batch at once
        allocator.free_group_begin()
        try:
            staging = self.join_ready(blocks, out)  # stage 1 of staged joins
            park(batch, [seq.req for seq in to_stage])
            staged.run(self, staging + to_stage, out)
        finally:
            allocator.free_group_end()
        out.flush(self.scheduler)

    def join_ready(self, blocks: list[Block], out: Injections) -> list[Seq]:
        """Join each block whose branches are all parked: their slot ids moved into the
        parents' rows at once (a nested block's parent is a branch, never parked while
        its own block is open, so no join here depends on another). Returns the parents
        of staged joins, whose stage 1 is next (staged.run)."""
        seen, ready, staging = set(), [], []
        for block in blocks:
            if id(block) not in seen and block.all_parked():
                seen.add(id(block))
                self.ctl.rows.wake_unit(live_branches(block.parent.unit.root))
                if staged.applies(self, block):
                    staging.append(staged.begin(block))
                else:
                    ready.append(block)
        if not ready:
            return staging
        pool = self.scheduler.req_to_token_pool
        debug = [self._branch_copies(block) for block in ready] if self.ctl.debug_events is not None else None
        ends, duplicates = join_rows(pool.req_to_token, [
            (block.parent.req.kv.req_pool_idx, block.prefix_len,
             [(b.req.kv.req_pool_idx, b.req.kv.kv_committed_len) for b in block.branches], block.uncommitted)
            for block in ready])
        if duplicates.numel():
            self.scheduler.token_to_kv_pool_allocator.free(duplicates)
        for k, (block, kv_len) in enumerate(zip(ready, ends, strict=True)):
            self._joined_rows(block, kv_len, debug[k] if debug is not None else None, out)
        return staging

    def _branch_copies(self, block: Block) -> list[int]:
        """The slots of u in every branch but the first (the join frees them): debug only."""
        table = self.scheduler.req_to_token_pool.req_to_token
        n, u = block.prefix_len, block.uncommitted
        return [int(x) for b in block.branches[1:] for x in table[b.req.kv.req_pool_idx, n:n + u]]

    def _joined_rows(self, block: Block, kv_len: int, freed: list[int] | None, out: Injections) -> None:
        """A join once the parent's row holds every branch's slots: requests, text,
        positions and rows, then the join header."""
        seq, parent = block.parent, block.parent.req
        pool = self.scheduler.req_to_token_pool
        branches = [b.req for b in block.branches]
        at = block.prefix_len
        for k, b in enumerate(branches):  # the row pieces join_rows moved in, for a rebuild
            start = block.prefix_len + (block.uncommitted if k else 0)
            note_slots(seq, COPY, at, at + b.kv.kv_committed_len - start, b.npr, start)
            at += b.kv.kv_committed_len - start
        fork_len = len(parent.output_ids)
        for b in branches:
            parent.output_ids.extend(b.output_ids[fork_len:])
        splice_branch_logprobs(parent, branches, fork_len)
        # Shared positions: the continuation starts after the longest branch, measured
        # to its close tag (a tail after it does not count, as in training).
        next_pos = max(close_len(b) - b.npr.pos_offset for b in branches)
        seq.pos_offset = kv_len - next_pos
        note_causal(seq, kv_len)
        pool.free_rows([b.kv.req_pool_idx for b in branches])
        for b in branches:
            b.kv.req_pool_idx = None
            b.kv.mark_kv_released()
        parent.kv.kv_committed_len = parent.kv.kv_allocated_len = kv_len
        # The joined token ids do not describe their KV positions: keep it out of the tree.
        parent.skip_radix_cache_insert = True
        # Its text is the branches' (already read): the decoder only needs the context,
        # which ends with the last branch's close tag and tail (whole texts, encoded).
        seq.decoder.resume(parent.output_ids[-DECODE_CONTEXT:], whole=True)
        if freed is not None:
            self._debug("join", rid=parent.rid, row=pool.req_to_token[parent.kv.req_pool_idx, :kv_len].tolist(),
                        freed=freed)
        self.joined(seq, block)
        self._resume(seq, block, out)
        self.ctl.lifecycle.closed(seq.unit)

    def joined(self, seq: Seq, block: Block) -> None:
        """Bookkeeping once every branch's KV is in the parent's row."""
        seq.parser.on_join()
        seq.phase, seq.child = Phase.ACTIVE, None
        seq.unit.blocks_open -= 1
        seq.unit.joined = True
        self.ctl.metrics.joined(sum(b.path.tokens for b in block.branches))
        if seq.is_branch:
            seq.path.tokens = seq.own_tokens()

    def _resume(self, seq: Seq, block: Block, out: Injections) -> None:
        """Feed the join header and put the parent back in the running batch."""
        parent = seq.req
        header = self.ctl.tokens(seq.schema.join_header)
        block.trace.join_tokens = len(header)
        budget = seq.unit.root.req.sampling_params.max_new_tokens
        if not seq.is_branch and len(parent.output_ids) + len(header) >= budget:
            self.finish_length(seq)
            return
        if self.ctl.writes_at_once(seq):
            rest = header
            if parent.return_logprob:
                # Its first token is scored from the last branch's closing row, which the
                # extend does not compute: recorded as the one-per-step path does.
                parent.output_ids.append(header[0])
                note_join_token(seq, block)
                seq.injected += 1
                seq.parser.feed(seq.decoder.push([header[0]]))
                rest = header[1:]
            if rest:
                self.ctl.write(seq, rest)
            self.ctl.queue_extend(seq)
            return
        parent.output_ids.append(header[0])
        note_join_token(seq, block)
        seq.forced.extend(header[1:])
        seq.injected += 1
        seq.parser.feed(seq.decoder.push([header[0]]))
        out.add(parent, header[0])

    def finish_length(self, seq: Seq) -> None:
        """max_tokens ran out inside the block: finish now, close the block in the text."""
        parent = seq.req
        seq.unit.closing_text = seq.schema.join_header + seq.parser.closing_text()
        parent.finished_reason = FINISH_LENGTH(length=parent.sampling_params.max_new_tokens)
        parent.finished_len = len(parent.output_ids)
        release_kv_cache(parent, self.scheduler.tree_cache, checkpoint=False)
        self.scheduler.output_streamer.stream_output([parent], parent.return_logprob)

    def _debug(self, event: str, **fields) -> None:
        if self.ctl.debug_events is not None:
            self.ctl.debug_events.append({"event": event, **fields})

