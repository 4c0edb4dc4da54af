"""Hook: `sglang.srt.managers.schedule_policy.PrefillAdder._get_running_request_total_token_offset`
(AROUND), SGLang 0.5.23.

Before admitting new requests SGLang holds back, for every running request, the tokens
it may still decode (its remaining `max_new_tokens`, times the new-token ratio unless
it ignores EOS). Branches carry a large `max_new_tokens` and `ignore_eos` of their own,
so each would hold back its unit's whole budget (8 branches: 8 times it). A branch is
reserved its share of what its unit can still write instead (`reservation`),
at SGLang's new-token ratio unless the request ignores EOS, as SGLang reserves any
request: if the estimate runs short, a unit is retracted whole and rebuilt without loss
(sched/retraction.py), as SGLang retracts and re-prefills other requests.
"""

from __future__ import annotations

from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.state import Seq, live_count, seq_of, subtree_tokens


def unit_share(original, adder, req, *args, **kwargs):
    seq = seq_of(req)
    if seq is None or not seq.is_branch:
        return original(adder, req, *args, **kwargs)
    ratio = 1.0 if seq.unit.root.req.sampling_params.ignore_eos else adder.new_token_ratio
    return min(reservation(seq, ratio), CLIP_MAX_NEW_TOKENS)


def reservation(seq: Seq, ratio: float = 1.0) -> float:
    """KV tokens SGLang's admission should hold back for a running branch.

    A branch runs with a large `max_new_tokens` of its own (SGLang must never end it
    before our budgets do), but what its unit can still write is the root's
    `max_new_tokens` less the unit's tokens so far: that is split over the unit's live
    branches, and no branch gets more than its own path budget leaves; that share counts
    at SGLang's new-token `ratio`, as any request's remaining budget does. Each also
    keeps its copy of the parent's uncommitted tokens (freed at the join) and one slot
    for the step being decided."""
    unit = seq.unit
    left = max(unit.root.req.sampling_params.max_new_tokens - subtree_tokens(unit.root), 0)
    live = live_count(unit) or 1
    share = -(-left // live)
    limit = seq.options.max_path_tokens
    if limit is not None:
        share = min(share, max(limit - seq.own_tokens(), 0))
    return share * ratio + seq.block.uncommitted + 1


HOOKS = [
    Hook(
        "sglang.srt.managers.schedule_policy.PrefillAdder._get_running_request_total_token_offset",
        Kind.AROUND,
        unit_share,
    )
]
