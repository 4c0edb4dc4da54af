"""Injected-token records and output log-probs for forked requests.

SGLang keeps one output log-prob per output token (`req.logprob.output_token_logprobs_*`).
Three things break that alignment once a request forks, and are repaired here:

- a branch is a fresh `Req`: it must ask for log-probs like its parent does;
- at the join the parent's output ids grow by every branch's tokens without a step:
  the branches' own entries are spliced in (minus the one a branch sampled after its
  close tag, which was dropped from its output ids);
- an injected token replaces the sampled one after the sampler ran, so SGLang records
  the sampled token's value under the injected id. `record_injected` rescores the
  injected id from the same logits row (`NaN` if that row cannot be read back).

The join header's first token is appended without a step of its own. Its predecessor
in the flattened text is the last branch's last token, whose row was computed by that
branch's closing step (the step whose sampled token is dropped): `stash_join_logprob`
keeps the header token's value from that row.
"""

from __future__ import annotations

import math

import torch

from npr_engine.sched.state import Phase, Seq, seq_of

NAN = float("nan")
_MATCH_TOL = 1e-3
_LOG_FLOOR = torch.finfo(torch.float32).min

_VAL, _IDX = "output_token_logprobs_val", "output_token_logprobs_idx"
_TOP = ("output_top_logprobs_val", "output_top_logprobs_idx")
_IDS = ("output_token_ids_logprobs_val", "output_token_ids_logprobs_idx")


def inherit_logprob_request(parent, branch) -> None:
    """A branch computes log-probs iff its parent does (same top-k / token-id asks)."""
    if not parent.return_logprob:
        return
    branch.return_logprob = True
    branch.logprob.top_logprobs_num = parent.logprob.top_logprobs_num
    branch.logprob.token_ids_logprob = parent.logprob.token_ids_logprob
    for name in (_VAL, _IDX, *_TOP, *_IDS):
        setattr(branch.logprob, name, [])


def _kept_lists(req) -> tuple[str, ...]:
    """The output lists SGLang appends to for this request (one entry per token)."""
    names = [_VAL, _IDX]
    if req.logprob.top_logprobs_num > 0:
        names += _TOP
    if req.logprob.token_ids_logprob is not None:
        names += _IDS
    return tuple(names)


def _append_unscored(req, token: int, value: float = NAN) -> None:
    """One entry for a token no step scored (its top / token-id rows stay empty)."""
    for name in _kept_lists(req):
        entry = value if name == _VAL else token if name == _IDX else []
        getattr(req.logprob, name).append(entry)


# -- before the stock result processing ------------------------------------------------


def record_injected(ctl, batch, result, sampled, overrides: list[tuple[int, int]], closing: list[int]) -> None:
    """Note every injected token in the trace; rescore it if log-probs are returned.

    `sampled`: the step's sampled ids (read once), which tell which form (logits or
    probabilities) the sampler left in each logits row; `closing`: the rows of branches
    in their closing step.
    """
    out = result.logits_output
    scoring = batch.return_logprob and out is not None and out.next_token_logprobs is not None
    for i, token in overrides:
        req = batch.reqs[i]
        seq = seq_of(req)
        if seq.stage is None:  # a staged join's step writes a path's own (recorded) first token
            _injected_list(seq).append(len(req.output_ids) - seq.fork_out_len)
        if scoring and req.return_logprob:
            out.next_token_logprobs[i] = rescore(out, i, sampled[i], token)
    if scoring:
        _stash_join_logprobs(ctl, batch, result, sampled, closing)


def _stash_join_logprobs(ctl, batch, result, sampled, closing: list[int]) -> None:
    """Keep the join header's first-token log-prob from each last branch's closing step."""
    out = result.logits_output
    for i in closing:
        req = batch.reqs[i]
        seq = seq_of(req)
        if seq.phase is not Phase.CLOSING or not req.return_logprob:
            continue
        if seq.path.index != len(seq.block.branches):
            continue
        header = ctl.tokens(seq.schema.join_header)
        # NOTE: an attribute of our own on the Block; read back by note_join_token.
        seq.block.join_logprob = rescore(out, i, sampled[i], header[0])


def rescore(out, i: int, sampled: int, token: int) -> float:
    """The log-prob of `token` in row i, in the same form SGLang used for `sampled`.

    NOTE: the sampler works in place: a greedy batch leaves the (custom-processed)
    logits in the row and returns log_softmax of it; a sampling batch leaves the
    temperature-scaled probabilities and returns their log. The sampled token's
    returned value tells which; if neither form reproduces it, say so with NaN.
    """
    logits = getattr(out, "next_token_logits", None)
    if logits is None:
        return NAN
    row = logits[i].float()
    got = float(out.next_token_logprobs[i])
    # NOTE: the closest form wins: on a near-uniform distribution (a random model) the
    # log-softmax of a probability row is within tolerance of the sampled value too.
    best, best_err = None, _MATCH_TOL * max(1.0, abs(got))
    for form in (_log_softmax, torch.log):
        values = form(row)
        err = abs(float(values[sampled]) - got)
        if err <= best_err:
            best, best_err = values, err
    return NAN if best is None else max(float(best[token]), _LOG_FLOOR)


def _log_softmax(row: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(row, dim=-1)


def _injected_list(seq: Seq) -> list[int]:
    return seq.path.injected if seq.is_branch else seq.unit.trace.injected


# -- at the join ----------------------------------------------------------------------


def splice_branch_logprobs(parent, branches: list, fork_len: int, skip: int = 0) -> None:
    """Append each branch's entries to the parent's, in index order, as its ids were.

    A branch's entries line up with its own ids (`output_ids[fork_len:]`); the one it
    has past them is the token sampled after its close tag, dropped from its ids.
    `skip`: leading own ids the parent already has (with their entries).
    """
    if not parent.return_logprob:
        return
    names = _kept_lists(parent)
    for branch in branches:
        own = list(branch.output_ids[fork_len:])[skip:]
        entries = {name: list((getattr(branch.logprob, name) or [])[skip: skip + len(own)]) for name in names}
        for name in names:
            getattr(parent.logprob, name).extend(entries[name])
        for token in own[len(entries[_VAL]):]:  # never expected; keeps the alignment
            _append_unscored(parent, token)


def note_join_token(seq: Seq, block) -> None:
    """The join header's first token was appended without a step: record it as injected
    and give it the value stashed from the last branch's closing step."""
    req = seq.req
    _injected_list(seq).append(len(req.output_ids) - 1 - seq.fork_out_len)
    if req.return_logprob:
        _append_unscored(req, req.output_ids[-1], getattr(block, "join_logprob", NAN))


# -- tokens written at once (multi-token injection, npr_engine/sched/extend.py) ---------


def extend_scores_match_steps(seq: Seq) -> bool:
    """Whether SGLang's extend log-probs (a raw log_softmax of each row) are what one
    step per token would return for an injected token: greedy or temperature 1 (the
    sampler's own forms), and nothing that changes a row before sampling (custom logit
    processor, penalties, min_new_tokens, logit bias, grammar, watermark, per-branch
    sampling) nor asks for more than the token's own value (top / token-id log-probs)."""
    req, params = seq.req, seq.req.sampling_params
    return (
        params.temperature == 1.0  # greedy too: SGLang sets it to 1 with top_k 1
        and req.custom_logit_processor is None
        and not (params.frequency_penalty or params.presence_penalty or params.min_new_tokens)
        and params.repetition_penalty == 1.0
        and not params.logit_bias
        and params.watermark is None
        and getattr(req, "grammar", None) is None
        and not (params.json_schema or params.regex or params.ebnf or params.structural_tag)
        and seq.options.branch_sampling is None
        and req.logprob.top_logprobs_num <= 0
        and req.logprob.token_ids_logprob is None
    )


def ask_extend_scores(req) -> int | None:
    """Make the extend batch being built compute a row per extend token for `req`
    (SGLang's input log-probs); returns the value to restore after prepare_for_extend."""
    if not req.return_logprob:
        return None
    saved, req.logprob_start_len = req.logprob_start_len, req.kv.kv_committed_len
    return saved


def set_next_token_ids(batch) -> None:
    """The token each extend row is scored for: the one after it in the sequence.

    NOTE: SGLang 0.5.23 takes them from the prompt only (`origin_input_ids`) and pads
    with id 0 past it (prepare_for_extend): right for a chunked prompt, not for our
    extends, which run over output tokens.
    """
    ids: list[int] = []
    for req, start in zip(batch.reqs, batch.extend_logprob_start_lens, strict=True):
        n = req.extend_len - start
        if n <= 0:
            continue
        first = req.prefix_len + start + 1
        after = list(req.full_untruncated_fill_ids[first:first + n])
        ids += after + [0] * (n - len(after))
    old = batch.extend_input_logprob_token_ids
    batch.extend_input_logprob_token_ids = torch.tensor(ids, dtype=torch.int64).pin_memory() if (
        old is not None and old.is_pinned()) else torch.tensor(ids, dtype=torch.int64)


def score_written(batch, result) -> None:
    """Entries for the tokens an extend step of ours computed that have none yet (they
    were written at once), before SGLang appends the sampled token's: row r of a
    sequence's extend scores its (r + 1)-th extend token. The rows are SGLang's input
    log-probs, which are then kept from the request's own input log-probs.

    NOTE: one more host read, on extend steps of log-prob requests only.
    """
    out = result.logits_output
    if not batch.return_logprob or out is None or out.input_token_logprobs is None:
        return
    seqs = [seq_of(r) for r in batch.reqs]
    if not all(s is not None and s.phase is Phase.EXTEND for s in seqs):
        return  # new requests' prefill: their input log-probs are SGLang's
    out.finalize_input_logprobs()
    values = out.input_token_logprobs.tolist()
    lens, starts = result.extend_input_len_per_req, result.extend_logprob_start_len_per_req
    pt = 0
    for i, seq in enumerate(seqs):
        n = lens[i] - starts[i]
        if n <= 0:
            continue
        rows, pt = values[pt:pt + n], pt + n
        starts[i] = lens[i]  # SGLang stores no input log-probs for this request
        committed = seq.req.prefix_len
        _fill_written(seq.req, seq.fork_out_len, rows, committed)
        if seq.is_branch and seq.path.index == 1:
            # The parent's own tokens written at once before its fork (a separator, a
            # forced open) have their KV, and rows, in every branch's extend.
            parent = seq.block.parent
            _fill_written(parent.req, parent.fork_out_len, rows, committed)


def _fill_written(req, base: int, rows: list[float], committed: int) -> None:
    if not req.return_logprob:
        return
    end = len(req.output_ids)
    missing = end - base - len(req.logprob.output_token_logprobs_val)
    origin = len(req.origin_input_ids)
    for p in range(end - missing, end):
        r = origin + p - committed - 1  # the row before the token's own
        _append_unscored(req, req.output_ids[p], rows[r] if 0 <= r < len(rows) - 1 else NAN)


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def note_written(seq: Seq, count: int) -> None:
    """The last `count` output ids were written by the engine at once (multi-token
    injection, npr_engine/sched/extend.py): record them as injected."""
    end = len(seq.req.output_ids) - seq.fork_out_len
    _injected_list(seq).extend(range(end - count, end))
