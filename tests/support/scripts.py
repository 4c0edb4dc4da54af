"""Build ScriptedTags scripts from a block structure instead of by hand.

A reply is a list of parts: text (str) or :class:`Blk`. The builder returns the
per-chain token scripts ScriptedTags needs (tests/support/scripted.py) and the
flattened token list the engine should return. Pieces are encoded separately, the
way the engine encodes what it injects (headers, close tags, join header), so the
root's script is exactly the concatenation of its branches' tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from npr_engine.grammar import TagSchema, get_schema


@dataclass
class Pth:
    """One path: its own parts; `end` is "close" (the model writes the close tag) or
    "eos" (the model writes EOS; the engine injects the close tag)."""

    parts: list = field(default_factory=list)
    end: str = "close"


@dataclass
class Blk:
    """A block: its paths, the summary text and whether the model closes it.

    `plan` (schemas with plan items): the items written between block open and the
    fork point; `open_text`, if given, is the exact text between block open and fork
    point instead (its plan items must still be listed in `plan`, for the header ids).
    `closed` False: the model stops (EOS) inside the summary.
    """

    paths: list[Pth]
    summary: str = "S"
    closed: bool = True
    plan: list[str] | None = None
    open_text: str | None = None
    close_sep: str = ""  # text between the join close and the block close
    fallback: bool = False  # decoded as plain text (no fork): the model writes headers too


class ScriptBuilder:
    """`sparse`: scripts for SparseScript instead (tests/support/sparse_script.py):
    what the engine writes, and every word of the model's own text, are left to the
    model (None), as is each branch's step after its end; tags and separators the
    model writes stay forced."""

    def __init__(self, tokenizer, schema: TagSchema | str = "parallel", sparse: bool = False) -> None:
        self.schema = get_schema(schema)
        self.sparse = sparse
        self._encode: Callable[[str], list[int]] = lambda t: tokenizer.encode(t, add_special_tokens=False)
        self._text = lambda ids: tokenizer.decode(ids)

    def enc(self, text: str) -> list:
        """The model's own text."""
        ids = self._encode(text) if text else []
        if not self.sparse:
            return ids
        return [None if self._text([t]).strip().isalpha() else t for t in ids]

    def inj(self, text: str) -> list:
        """Text the engine writes."""
        ids = self._encode(text) if text else []
        return [None] * len(ids) if self.sparse else ids

    def build(self, parts: list) -> dict[str, list[int]]:
        """Scripts by chain ("" = root); the root's script is the flattened reply."""
        scripts: dict[str, list[int]] = {}
        scripts[""] = self._sequence(parts, "", scripts)
        return scripts

    def _sequence(self, parts: list, chain: str, scripts: dict) -> list[int]:
        out: list[int] = []
        blocks = 0
        for part in parts:
            if isinstance(part, Blk):
                out += self._block(part, chain, scripts, blocks)
                blocks += 1
            else:
                out += self.enc(part)
        return out

    def _block(self, blk: Blk, chain: str, scripts: dict, k: int = 0) -> list[int]:
        s = self.schema
        out = self.enc(s.block_open)
        items: list[str] = []
        if s.plan_open is not None:
            items = blk.plan if blk.plan is not None else [f"{i}:" for i in range(1, len(blk.paths) + 1)]
            if blk.open_text is not None:
                out += self.enc(blk.open_text)
            else:
                for item in items:
                    out += self.enc(s.plan_open) + self.enc(item) + self.enc(s.plan_close)
            out += self.enc(s.fork_after)
        out += self.inj(s.fork_separator)  # written by the engine, fork or no fork
        engine = self.enc if blk.fallback else self.inj
        ids = s.path_ids(tuple(items), len(blk.paths))
        for i, path in enumerate(blk.paths, start=1):
            part = f"{k}:{i}" if k else str(i)  # the (k+1)-th block of this sequence
            sub = f"{chain}.{part}" if chain else part
            own = engine(s.header(ids[i - 1])) + self._sequence(path.parts, sub, scripts)
            after = [None] if self.sparse else []  # the step after its end scores the next token
            if path.end == "close":
                own += self.enc(s.branch_close) + engine(s.branch_tail)
                scripts[sub] = own + after
            else:  # EOS: the branch's script stops; the engine injects the close tag
                scripts[sub] = own
                own = own + engine(s.branch_close) + engine(s.branch_tail)
            out += own
        out += engine(s.join_header) + self.enc(blk.summary)
        if blk.closed:
            close = self.enc(blk.close_sep) + self.enc(s.block_close) if s.block_close else []
            out += self.enc(s.join_close) + close
        return out


def sampling(script: dict, max_new_tokens: int, npr: dict | None = None, eos: int | None = None, **extra) -> dict:
    """Sampling params running `script` through ScriptedTags (greedy)."""
    custom = {"npr": {"paths": 2, **(npr or {})}, "script": script}
    if eos is not None:
        custom["eos"] = eos
    return {"max_new_tokens": max_new_tokens, "temperature": 0, "custom_params": custom, **extra}


def run_script(engine, parts: list, schema: str = "parallel", npr: dict | None = None,
               max_new_tokens: int | None = None, prompt: str = "Plan two approaches.",
               return_logprob: bool = False, **extra) -> tuple[dict, dict]:
    """Generate with the model forced to write `parts`, then EOS; returns (output, scripts)."""
    from tests.support.scripted import ScriptedTags

    tokenizer = engine.tokenizer_manager.tokenizer
    scripts = ScriptBuilder(tokenizer, schema).build(parts)
    params = sampling(scripts, max_new_tokens or len(scripts[""]) + 8, {"schema": schema, **(npr or {})},
                      eos=tokenizer.eos_token_id, **extra)
    out = engine.generate(prompt, params, custom_logit_processor=ScriptedTags().to_str(),
                          return_logprob=return_logprob)
    return out, scripts


def scripted_text(engine, scripts: dict) -> str:
    return engine.tokenizer_manager.tokenizer.decode(scripts[""])
