"""32 concurrent streaming requests through the official `openai` client: half forced
parallel, a few closed by the client mid-stream. Every other one completes with usage
and (forced ones) a well-formed trace; afterwards nothing leaks (issue 5)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

REQUESTS = 32
MAX_TOKENS = 32
FORCED = {"force": True, "paths": 2, "max_path_tokens": 12}  # header 6 + close 3 tokens: room for text
CLOSED_EARLY = {3, 10, 17, 24}  # two forced (even), two plain (odd); chat and completions
FINISHES = {"close", "budget", "eos", "stop", "length"}


def is_forced(i: int) -> bool:
    return i % 2 == 0


def is_chat(i: int) -> bool:
    return i % 4 < 2


async def one(client: openai.AsyncOpenAI, i: int) -> list | None:
    common = {"model": "default", "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": i, "stream": True,
              "stream_options": {"include_usage": True},
              "extra_body": {"parallel": FORCED} if is_forced(i) else None}
    if is_chat(i):
        messages = [{"role": "user", "content": f"Give me fact number {i} about the moon."}]
        stream = await client.chat.completions.create(messages=messages, **common)
    else:
        stream = await client.completions.create(prompt=f"Fact number {i} about the moon:", **common)
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        if i in CLOSED_EARLY:
            assert not any(c.choices and c.choices[0].finish_reason for c in chunks), "closed too late"
            await stream.close()  # the client hangs up mid-stream
            return None
    return chunks


async def run_all(base_url: str) -> list:
    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0, timeout=300) as client:
        return await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))


def check_trace(trace: dict, completion_tokens: int, critical: int) -> None:
    assert trace["schema"] == "parallel" and len(trace["blocks"]) == 1
    block = trace["blocks"][0]
    assert block["width"] == 2 and [p["index"] for p in block["paths"]] == [1, 2]
    assert all(p["finish"] in FINISHES and 0 < p["tokens"] <= FORCED["max_path_tokens"] for p in block["paths"])
    assert trace["total_tokens"] == completion_tokens <= MAX_TOKENS
    assert trace["critical_path_tokens"] == critical < trace["total_tokens"]


def check_reply(i: int, chunks: list) -> None:
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert len(finals) == 1, f"request {i}: {len(finals)} final chunks"
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= MAX_TOKENS
    extra = finals[0].choices[0].model_extra or {}
    if is_forced(i):
        check_trace(extra["parallel_trace"], usage.completion_tokens, usage.model_extra["critical_path_tokens"])
    if is_chat(i):
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        text = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
        text += "".join(d.content or "" for d in deltas)
    else:
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.startswith("<parallel><path>1: ") == is_forced(i), (i, text)


@pytest.mark.timeout(240)
def test_32_concurrent_streams_half_parallel_some_closed(server):
    results = asyncio.run(run_all(server.base_url))
    assert [i for i, r in enumerate(results) if r is None] == sorted(CLOSED_EARLY)
    for i, chunks in enumerate(results):
        if chunks is not None:
            check_reply(i, chunks)
    server.assert_kv_idle()
    reply = httpx.post(server.base_url + "/v1/completions", timeout=60,
                       json={"model": "default", "prompt": "Hi", "max_tokens": 4})
    assert reply.status_code == 200
