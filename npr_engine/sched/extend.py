"""Multi-token injection as one extend step (STYLE.md: "fork-header prefill and
join-header prefill are then the same mechanism").

Injected text of several tokens (a forced block open, a branch's header, the join
header) would cost one forward step per token if fed like sampled tokens. Instead
the tokens are appended to the sequence's `output_ids` at once and the sequence is
queued here, out of every batch; at the next scheduling point its uncommitted tokens
run as one extend (prefill) forward over the KV row it already holds, sampling the
token after them. SGLang then merges that batch into the running batch as it does
any finished prefill.

    row before:  | committed KV ............ | (no KV yet)
    fill ids:    | origin_input_ids + output_ids ........... u1 .. uk |
    this step:                                 ^ extend input: u1 .. uk

Every queued sequence of a step goes into one extend batch, so a fork or a join
costs the other running requests a single forward step. Sequences whose tokens do not
fit in free (or evictable) KV wait, oldest first, while the running batch decodes and
new requests are not admitted; a sequence that could not fit even in an empty pool is
left to `too_big` (its unit is aborted, naming the pool size).
"""

from __future__ import annotations

from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.runtime_context import attention_backends
from sglang.srt.utils import support_triton

from npr_engine.sched.batches import new_batch
from npr_engine.sched.logprobs import ask_extend_scores, set_next_token_ids
from npr_engine.sched.state import Phase, Seq

_held_rows = False  # see held_rows()


def held_rows() -> bool:
    """Whether the batch being prepared is ours (build_extend_batch) and its slots are
    written by SGLang's per-request CPU fallback, not its Triton kernel."""
    return _held_rows


class ExtendQueue:
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.waiting: list[Seq] = []

    def add(self, seq: Seq) -> None:
        seq.phase = Phase.EXTEND
        seq.unit.extending += 1
        self.waiting.append(seq)

    def done(self, seq: Seq) -> None:
        """The extend ran (or the sequence died): it is an ordinary running request again."""
        if seq.phase is Phase.EXTEND:
            seq.phase, seq.after_extend = seq.after_extend, Phase.ACTIVE
            seq.unit.extending -= 1

    def discard(self, seq: Seq) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.done(seq)

    def __len__(self) -> int:
        return len(self.waiting)

    def take_batch(self) -> ScheduleBatch | None:
        """The extend batch for the live queued sequences whose tokens fit in KV, or None
        (then every live one still waits)."""
        seqs, self.waiting = self.waiting, []
        live = [s for s in seqs if _alive(s)]
        for seq in seqs:
            if seq not in live:
                self.done(seq)
        room = free_kv_tokens(self.scheduler)
        fits = []
        for seq in live:
            need = extend_tokens(seq.req)
            if need > room:
                self.waiting = live[len(fits):]  # oldest first: no one overtakes
                break
            fits.append(seq)
            room -= need
        if not fits:
            return None
        return build_extend_batch(self.scheduler, [s.req for s in fits])

    def too_big(self) -> list[Seq]:
        """Waiting sequences that would not fit even if every other slot were free."""
        total = self.scheduler.token_to_kv_pool_allocator.size
        return [s for s in self.waiting if extend_tokens(s.req) > total]


def extend_tokens(req) -> int:
    """Tokens of the request without KV yet: what its extend step computes."""
    return len(req.origin_input_ids) + len(req.output_ids) - req.kv.kv_committed_len


def free_kv_tokens(scheduler) -> int:
    """KV slots an allocation can get now: free ones plus what the radix tree can evict."""
    return scheduler.token_to_kv_pool_allocator.available_size() + scheduler.tree_cache.evictable_size()


def _alive(seq: Seq) -> bool:
    req = seq.req
    return req.kv.holds_kv and not req.finished() and req.to_finish is None


def build_extend_batch(scheduler, reqs: list) -> ScheduleBatch:
    """An extend batch over rows the requests already hold (SGLang's chunked-prefill path:
    `alloc_for_extend` keeps a held row and reads the prefix from it)."""
    restore = {id(req): ask_extend_scores(req) for req in reqs}
    for req in reqs:
        committed = req.kv.kv_committed_len
        req.refresh_fill_ids()
        req.prefix_len = committed
        req.extend_end = len(req.full_untruncated_fill_ids)
        assert req.extend_end > committed, "nothing to extend"
        # NOTE: not a cache hit: keeps usage.cached_tokens the prompt's own.
        req.already_computed = committed
    batch = new_batch(scheduler, reqs)
    global _held_rows
    # Every request holds its row with its prefix in it (patches/extend_batch.py: the
    # slot writer skips reading the prefix out and writing it back).
    _held_rows = not support_triton(attention_backends()[0])
    try:
        batch.prepare_for_extend()
    finally:
        _held_rows = False
    batch.decoding_reqs = None
    for req in reqs:
        if restore[id(req)] is not None:
            req.logprob_start_len = restore[id(req)]
    if batch.return_logprob:
        set_next_token_ids(batch)
    return batch
