"""Random tag/text sequences forced through the engine, some aborted at a random time.

After each: the idle KV conditions hold (DESIGN.md section 6) and, unless aborted, the
returned text parses back into the trace (same blocks, same widths, recursively).
Examples are few and derandomized so the test is bounded (~1-2 minutes on 2 cores).
"""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.engine import assert_idle
from tests.support.readback import assert_text_matches_trace
from tests.support.scripted import ScriptedTags
from tests.support.scripts import Blk, Pth, ScriptBuilder, sampling

# Text a model might write anywhere: words and tags that are stray in most places.
PIECES = ("a", " b", " c d", "</path>", "</summary>", "</parallel>", "<summary>", " ", "\n")
text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join)


def paths(depth: int, width: int) -> st.SearchStrategy[list[Pth]]:
    part = st.one_of(text, text, blocks(depth + 1, width)) if depth < 2 else text
    path = st.builds(Pth, st.lists(part, min_size=1, max_size=1 + (depth < 2)),
                     st.sampled_from(("close", "close", "eos")))
    return st.lists(path, min_size=width, max_size=width)


def blocks(depth: int, width: int) -> st.SearchStrategy[Blk]:
    # Every block of a reply has the request's width: the `parallel` schema forks that many.
    return st.builds(Blk, st.deferred(lambda: paths(depth, width)), text)


@st.composite
def replies(draw: st.DrawFn) -> tuple[list, int]:
    width = draw(st.integers(1, 2))
    parts = draw(st.lists(st.one_of(text, blocks(1, width)), min_size=1, max_size=2))
    if draw(st.booleans()):
        parts.append(Blk(draw(paths(1, width)), draw(text), closed=False))  # EOS in the summary
    return parts, width


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(reply=replies(), max_depth=st.sampled_from((1, 2)), path_budget=st.sampled_from((None, 12)),
       cut=st.sampled_from((None, 0.5)), abort_after=st.sampled_from((None, None, 0.3, 1.0)))
def test_random_replies_never_leak_and_read_back(engine, reply, max_depth, path_budget, cut, abort_after):
    parts, width = reply
    tokenizer = engine.tokenizer_manager.tokenizer
    scripts = ScriptBuilder(tokenizer).build(parts)
    length = len(scripts[""]) + 4
    max_new = max(8, int(length * cut)) if cut else length
    npr = {"paths": width, "max_depth": max_depth, "max_path_tokens": path_budget}
    params = sampling(scripts, max_new, npr, eos=tokenizer.eos_token_id)
    out = run(engine, params, abort_after)
    if abort_after is None:
        assert isinstance(out, dict), out
        assert_text_matches_trace(out["text"], out["meta_info"]["npr_trace"])
        assert out["meta_info"]["completion_tokens"] <= max_new
    assert_idle(engine)


def run(engine, params: dict, abort_after: float | None) -> dict | BaseException:
    rid = f"fuzz-{uuid.uuid4().hex}"

    async def go():
        task = asyncio.ensure_future(engine.async_generate(
            "Plan two approaches.", params, rid=rid, custom_logit_processor=ScriptedTags().to_str()))
        if abort_after is not None:
            await asyncio.sleep(abort_after)
            engine.tokenizer_manager.abort_request(rid=rid)
        try:
            return await asyncio.wait_for(task, 300)
        except Exception as exc:  # SGLang may surface an abort as an exception
            return exc

    return engine.loop.run_until_complete(go())
