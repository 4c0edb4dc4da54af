"""Moving requests in and out of SGLang's running batch between forward steps."""

from __future__ import annotations

import torch
from sglang.srt.managers.overlap_utils import RelayPayload
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.sampling.sampling_batch_info import SamplingBatchInfo


def park(batch: ScheduleBatch, reqs: list) -> None:
    """Take `reqs` out of `batch` without touching their KV (filter_batch frees nothing).
    Finished requests leave with them, as filter_batch's own `reqs_to_exclude` has it
    (whose list lookup per request would cost len(batch) x len(reqs) comparisons)."""
    if reqs:
        out = {id(r) for r in reqs}
        batch.filter_batch(keep_indices=[i for i, r in enumerate(batch.reqs) if id(r) not in out and not r.finished()])


def new_batch(scheduler, reqs: list) -> ScheduleBatch:
    """An empty-state ScheduleBatch over `reqs`, wired to the scheduler's pools."""
    return ScheduleBatch.init_new(
        reqs=reqs,
        req_to_token_pool=scheduler.req_to_token_pool,
        token_to_kv_pool_allocator=scheduler.token_to_kv_pool_allocator,
        tree_cache=scheduler.tree_cache,
        model_config=scheduler.model_config,
        enable_overlap=scheduler.enable_overlap,
        spec_algorithm=scheduler.spec_algorithm,
    )


def build_decode_batch(scheduler, reqs: list, pending: list[int]) -> ScheduleBatch:
    """A decode-ready batch for requests whose KV exists up to kv_committed_len.

    Each request's pending token (no KV yet) is relayed through the FutureMap, which is
    where the next decode step reads its input ids from.
    """
    device = scheduler.device
    batch = new_batch(scheduler, reqs)
    rows = [r.kv.req_pool_idx for r in reqs]
    seq_lens = [r.kv.kv_committed_len for r in reqs]
    batch.req_pool_indices = torch.tensor(rows, dtype=torch.int64, device=device)
    batch.req_pool_indices_cpu = torch.tensor(rows, dtype=torch.int64)
    batch.seq_lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
    batch.seq_lens_cpu = torch.tensor(seq_lens, dtype=torch.int64)
    batch.orig_seq_lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    batch.seq_lens_sum = sum(seq_lens)
    batch.input_ids = None
    # NOTE: merge_batch concatenates these lists; init_new leaves None, which would fail.
    batch.multimodal_inputs = [r.multimodal_inputs for r in reqs]
    scheduler.future_map.stash(
        batch.req_pool_indices,
        RelayPayload(bonus_tokens=torch.tensor(pending, dtype=torch.int64, device=device)),
    )
    if batch.return_logprob:
        batch.top_logprobs_nums = [r.logprob.top_logprobs_num for r in reqs]
        batch.token_ids_logprobs = [r.logprob.token_ids_logprob for r in reqs]
    batch.sampling_info = SamplingBatchInfo.from_schedule_batch(batch, scheduler.model_config.vocab_size)
    return batch


def inject(scheduler, reqs: list, pending: list[int]) -> None:
    """Add decode-ready requests to the running batch; they decode from the next step."""
    if not reqs:
        return
    new_batch = build_decode_batch(scheduler, reqs, pending)
    running = scheduler.running_batch
    # filter_batch leaves stale tensors on an emptied batch: replace it, never merge.
    if running is None or running.is_empty():
        scheduler.running_batch = new_batch
    else:
        running.merge_batch(new_batch)
    scheduler.running_batch.batch_is_full = False


class Injections:
    """Requests a step puts back in the running batch, with their pending tokens: one
    merge for all of them (`flush`)."""

    def __init__(self) -> None:
        self.reqs: list = []
        self.pending: list[int] = []

    def add(self, req, token: int) -> None:
        self.reqs.append(req)
        self.pending.append(token)

    def flush(self, scheduler) -> None:
        inject(scheduler, self.reqs, self.pending)
        self.reqs, self.pending = [], []


def write_overrides(scheduler, batch, result, overrides: list[tuple[int, int]]) -> None:
    """Replace sampled tokens (row, token) in the step's result and in the FutureMap the
    next decode step reads its input ids from: one indexed write per tensor."""
    ids = result.next_token_ids
    where = torch.tensor([i for i, _ in overrides], dtype=torch.long).to(ids.device)
    tokens = torch.tensor([t for _, t in overrides], dtype=ids.dtype).to(ids.device)
    ids[where] = tokens
    rows = torch.tensor([batch.reqs[i].kv.req_pool_idx for i, _ in overrides], dtype=torch.long)
    buf = scheduler.future_map.output_tokens_buf
    buf[rows.to(buf.device)] = tokens.to(buf.dtype)


def commits_token(req) -> bool:
    """Whether `req` commits a token in the step it ran (SGLang appends one): as SGLang
    0.5.23 decides it, a middle prefill chunk commits nothing.

    NOTE: not the batch's `chunked_req`: a running batch that began as a chunk step's
    batch keeps that field after the chunked request's last chunk, and every decode step
    of it would have looked uncommitted (its forced tags and forks lost)."""
    return not (req.finished() or req.is_retracted or req.inflight_middle_chunks > 0)
