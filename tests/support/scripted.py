"""A test-only custom logit processor that makes the model write a scripted text.

Scripts are token lists keyed by a sequence's path chain: "" for the root, "1" for
path 1 of a top-level block, "1.2" for path 2 of a block nested in path 1. A sequence
at position p of its own text (its tokens since its fork, injected ones included) is
forced to script[p]; positions the engine injects are overridden by the engine anyway,
so a script is simply the sequence's flattened token list. Past its end, a script
forces EOS when `eos` is given, else leaves the model free.
"""

from __future__ import annotations

from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor


class ScriptedTags(CustomLogitProcessor):
    def __call__(self, logits, custom_param_list=None):
        for row, params in enumerate(custom_param_list or []):
            script = (params or {}).get("script")
            req = (params or {}).get("__req__")
            if not script or req is None:
                continue
            seq = req.__dict__.get("npr") if hasattr(req, "__dict__") else None
            chain, pos = _chain_and_position(req, seq)
            tokens = script.get(chain)
            if tokens is None:
                continue
            if pos < len(tokens):
                token = tokens[pos]
            elif params.get("eos") is not None:
                token = params["eos"]
            else:
                continue
            logits[row, :] = float("-inf")
            logits[row, token] = 0.0
        return logits


def _chain_and_position(req, seq):
    if seq is None or not seq.is_branch:
        return "", len(req.output_ids)
    chain = []
    node = seq
    while node is not None and node.is_branch:
        chain.append(_part(node))
        node = node.block.parent
    return ".".join(reversed(chain)), len(req.output_ids) - seq.fork_out_len


def _part(seq) -> str:
    """"i" for path i of a sequence's first block, "k:i" for its (k+1)-th block."""
    block = seq.block.trace
    siblings = [b for b in seq.unit.trace.blocks
                if (b.parent_block, b.parent_path) == (block.parent_block, block.parent_path)]
    k = next(n for n, b in enumerate(siblings) if b is block)
    return f"{k}:{seq.path.index}" if k else str(seq.path.index)
