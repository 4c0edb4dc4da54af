"""A unit (parent + branches) is aborted as one, in any state, and nothing leaks."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine import assert_idle, debug_events, forced, params

PROMPT = "Explain why the sky is blue."


def run_and_abort(engine, rid: str, sampling: dict, wait_for: str | None) -> dict | Exception:
    """Start a request, wait until the scheduler reports `wait_for` (fork/join) for it,
    then abort it."""

    async def reached() -> bool:
        if wait_for is None:
            return True
        states = await engine.tokenizer_manager.get_internal_state()
        events = states[0].get("npr_debug", [])
        return any(e["event"] == wait_for and e.get("rid") == rid for e in events)

    async def scenario():
        task = asyncio.ensure_future(engine.async_generate(PROMPT, sampling, rid=rid))
        await asyncio.sleep(0.5)
        for _ in range(600):
            if await reached():
                break
            await asyncio.sleep(0.05)
        engine.tokenizer_manager.abort_request(rid=rid)
        try:
            return await asyncio.wait_for(task, 60)
        except Exception as exc:  # SGLang may surface an abort as an exception
            return exc

    return engine.loop.run_until_complete(scenario())


@pytest.mark.parametrize(
    ("state", "sampling", "wait_for"),
    [
        # Branches still decoding (long paths): the parent is parked.
        ("branching", params(400, forced(3), ignore_eos=True), "fork"),
        # Paths are short; the abort lands after the join, in the summary.
        ("joined", params(400, forced(2, max_path_tokens=10), ignore_eos=True), "join"),
        # No block at all (plain decoding).
        ("plain", params(400, ignore_eos=True), None),
    ],
)
def test_abort_frees_the_whole_unit(engine, state, sampling, wait_for):
    rid = f"abort-{state}"
    result = run_and_abort(engine, rid, sampling, wait_for)
    if isinstance(result, dict):
        assert result["meta_info"]["finish_reason"]["type"] == "abort", result["meta_info"]
        assert result["meta_info"]["completion_tokens"] < 400
    forks = [e for e in debug_events(engine, rid) if e["event"] == "fork"]
    joins = [e for e in debug_events(engine, rid) if e["event"] == "join"]
    if state == "branching":
        assert forks and not joins
    if state == "joined":
        assert forks and joins
    assert_idle(engine)
    # The engine keeps serving.
    assert engine.generate(PROMPT, params(4))["meta_info"]["completion_tokens"] == 4
