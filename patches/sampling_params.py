"""Hook: `sglang.srt.sampling.sampling_params.SamplingParams.verify` (AFTER), SGLang 0.5.23.

SGLang validates every request's sampling parameters in the tokenizer manager, before
the request reaches a scheduler; a ValueError there becomes HTTP 400 on `/generate`
and an exception from `sglang.Engine`. Our options in `custom_params["npr"]` are
checked at the same point (the scheduler re-checks as a safety net), and put in the
form SGLang's IPC to the scheduler can carry (options.wire_custom_params).
"""

from __future__ import annotations

from npr_engine.core.options import NprOptions, wire_custom_params
from npr_engine.hooks import Hook, Kind


def verify_npr_options(ret, params, *args, **kwargs):
    NprOptions.from_custom_params(params.custom_params)  # raises InvalidNprOptions(ValueError)
    params.custom_params = wire_custom_params(params.custom_params)
    return ret


HOOKS = [Hook("sglang.srt.sampling.sampling_params.SamplingParams.verify", Kind.AFTER, verify_npr_options)]
