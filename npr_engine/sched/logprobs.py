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


def record_injected(ctl, batch, result, sampled: list[int], overrides: list[tuple[int, int]]) -> None:
    """Note every injected token in the trace; rescore it if log-probs are returned.

    `sampled`: the step's sampled ids (read once), which tell which form (logits or
    probabilities) the sampler left in each logits row.
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
        _stash_join_logprobs(ctl, batch, result, sampled)


def _stash_join_logprobs(ctl, batch, result, sampled: list[int]) -> None:
    """Keep the join header's first-token log-prob from each last branch's closing step."""
    out = result.logits_output
    for i, req in enumerate(batch.reqs):
        seq = seq_of(req)
        if seq is None or seq.phase is not Phase.CLOSING or not req.return_logprob:
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


def is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def note_written(seq: Seq, count: int) -> None:
    """The last `count` output ids were written by the engine at once (multi-token
    injection, npr_engine/sched/extend.py): record them as injected."""
    end = len(seq.req.output_ids) - seq.fork_out_len
    _injected_list(seq).extend(range(end - count, end))
