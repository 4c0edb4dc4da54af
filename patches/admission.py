"""Hook: `sglang.srt.managers.schedule_policy.PrefillAdder._get_running_request_total_token_offset`
(AROUND), SGLang 0.5.23.

Before admitting new requests SGLang holds back, for every running request, the tokens
it may still decode (its remaining `max_new_tokens`, times the new-token ratio unless
it ignores EOS). Branches carry a large `max_new_tokens` and `ignore_eos` of their own,
so each would hold back its unit's whole budget (8 branches: 8 times it). A branch is
reserved its share of what its unit can still write instead (sched/forking.reservation),
at SGLang's new-token ratio unless the request ignores EOS, as SGLang reserves any
request: if the estimate runs short, a unit is retracted whole and rebuilt without loss
(sched/retraction.py), as SGLang retracts and re-prefills other requests.
"""

from __future__ import annotations

from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS

from npr_engine.hooks import Hook, Kind
from npr_engine.sched.forking import reservation
from npr_engine.sched.state import seq_of


def unit_share(original, adder, req, *args, **kwargs):
    seq = seq_of(req)
    if seq is None or not seq.is_branch:
        return original(adder, req, *args, **kwargs)
    ratio = 1.0 if seq.unit.root.req.sampling_params.ignore_eos else adder.new_token_ratio
    return min(reservation(seq, ratio), CLIP_MAX_NEW_TOKENS)


HOOKS = [
    Hook(
        "sglang.srt.managers.schedule_policy.PrefillAdder._get_running_request_total_token_offset",
        Kind.AROUND,
        unit_share,
    )
]
