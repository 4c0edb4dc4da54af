"""A test-only custom logit processor that forces some tokens and leaves the rest free.

Like ScriptedTags (tests/support/scripted.py), scripts are keyed by path chain and
indexed by a sequence's own position; here an entry may be None: the model chooses
that token itself (its logits row is left untouched, so the engine's returned
log-prob is the model's own and can be checked against a dense forward). Positions
the engine injects are left None, so the engine's rescoring of injected tokens is
checked too. Past a script's end, EOS is forced when `eos` is given.
"""

from __future__ import annotations

from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

from tests.support.scripted import _chain_and_position


class SparseScript(CustomLogitProcessor):
    def __call__(self, logits, custom_param_list=None):
        for row, params in enumerate(custom_param_list or []):
            script = (params or {}).get("script")
            req = (params or {}).get("__req__")
            if not script or req is None:
                continue
            chain, pos = _chain_and_position(req, req.__dict__.get("npr"))
            tokens = script.get(chain)
            if tokens is None:
                continue
            token = tokens[pos] if pos < len(tokens) else params.get("eos")
            if token is None:
                continue
            logits[row, :] = float("-inf")
            logits[row, token] = 0.0
        return logits
