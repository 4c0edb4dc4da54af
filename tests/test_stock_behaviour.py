"""Stock SGLang behaviour with the plugin loaded and no `parallel` asked.

Every test here also holds against stock SGLang 0.5.23 without the plugin:
`NPR_TEST_STOCK=1 python -m pytest tests/test_stock_behaviour.py` runs them against
`python -m sglang.launch_server` with the same model and CPU flags (no plugin loaded).
Where the two answer differently on purpose, the test says so.
"""

from __future__ import annotations

import json
import os

import httpx
import openai
import pytest

from npr_engine.api.stream import SseRewriter

STOCK = os.environ.get("NPR_TEST_STOCK") == "1"


@pytest.fixture(scope="module")
def target(request, default_model_dir):
    if STOCK:
        from tests.conftest import ENGINE_KV_TOKENS
        from tests.support.server import stock_serving

        with stock_serving(default_model_dir, ENGINE_KV_TOKENS) as proc:
            yield proc
    else:
        yield request.getfixturevalue("server")


@pytest.fixture(scope="module")
def client(target):
    return openai.OpenAI(base_url=target.base_url + "/v1", api_key="none")


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def _idle(target) -> None:
    if not STOCK:
        target.assert_kv_idle()


COLOUR = [{"role": "user", "content": "Name a colour. One word."}]


def test_streamed_chat_with_logprobs(target, client, model):
    """SGLang's own test_openai_server checks on every chunk, and every log-prob entry of
    the reply arrives (stock without a parser drops the EOS token's; with one it sends it
    alone in a chunk without content, which these checks reject)."""
    reply = client.chat.completions.create(model=model, messages=COLOUR, max_tokens=32, temperature=0,
                                           logprobs=True, top_logprobs=2)
    assert reply.choices[0].finish_reason == "stop"  # ends on EOS: the case in question
    stream = client.chat.completions.create(model=model, messages=COLOUR, max_tokens=32, temperature=0,
                                            logprobs=True, top_logprobs=2, stream=True,
                                            stream_options={"include_usage": True})
    first, finished, entries, text = True, False, [], ""
    for chunk in stream:
        if chunk.usage is not None:
            assert chunk.usage.completion_tokens == reply.usage.completion_tokens
            continue
        choice = chunk.choices[0]
        finished |= choice.finish_reason is not None
        if first:
            assert choice.delta.role == "assistant"
            first = False
            continue
        if not finished:
            assert choice.logprobs and len(choice.logprobs.content[0].top_logprobs) == 2
        reasoning = getattr(choice.delta, "reasoning_content", None)
        assert (isinstance(choice.delta.content, str) or isinstance(reasoning, str)
                or choice.delta.tool_calls or choice.finish_reason)
        entries += choice.logprobs.content if choice.logprobs else []
        text += choice.delta.content or ""
    assert finished and text == reply.choices[0].message.content
    expected = reply.choices[0].logprobs.content
    assert len(entries) == len(expected) - (1 if STOCK else 0)
    assert [e.token for e in entries] == [e.token for e in expected[: len(entries)]]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in expected[: len(entries)]], abs=1e-4)
    _idle(target)


def test_completions_n_stop_and_penalties(target, client, model):
    both = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                     temperature=0, n=2)
    assert len(both.choices) == 2 and both.choices[0].text == both.choices[1].text
    plain = both.choices[0].text
    word = plain.split()[1] if len(plain.split()) > 1 else plain.strip()
    stopped = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                        temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == plain[: plain.index(word)]
    prompt = "1 1 1 1 1 1 1 1 1 1 1 1"
    same = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
    penalised = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0,
                                          frequency_penalty=2.0, presence_penalty=2.0)
    assert same.choices[0].text.split()[:1] == ["1"] and penalised.choices[0].text != same.choices[0].text
    _idle(target)


def test_bad_requests_answer_400_and_score_keeps_sglangs_body(target, client, model):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=COLOUR, max_tokens=4, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model, prompt="hi", max_tokens=4, top_p=2.0)
    resp = httpx.post(target.base_url + "/v1/score", json={"query": 5}, timeout=30)
    assert resp.status_code == 400
    body = resp.json()  # SGLang's own flat shape, not OpenAI's {"error": {...}}
    assert body["object"] == "error" and body["code"] == 400 and body["message"] and "error" not in body
    assert httpx.get(target.base_url + "/health", timeout=30).status_code == 200
    _idle(target)


def _chunk(index: int, finish=None, content=None, logprobs=None) -> bytes:
    choice = {"index": index, "delta": {"content": content}, "finish_reason": finish,
              "logprobs": {"content": logprobs} if logprobs else None}
    return b"data: " + json.dumps({"id": "r", "object": "chat.completion.chunk", "choices": [choice]}).encode()


def _events(out: bytes) -> list:
    return [e for e in out.split(b"\n\n") if e]


def test_rewriter_moves_logprob_only_chunks_to_the_next_event_of_their_choice():
    eos, tag = [{"token": "<eos>"}], [{"token": "<tag>"}]
    rw = SseRewriter()
    assert rw.feed(_chunk(0, content="Blue", logprobs=[{"token": "Blue"}]) + b"\n\n") != b""
    assert rw.feed(_chunk(0, logprobs=tag) + b"\n\n" + _chunk(0, logprobs=eos) + b"\n\n") == b""  # held
    other = _chunk(1, content="x", logprobs=[{"token": "x"}]) + b"\n\n"
    assert rw.feed(other) == other  # another choice's events pass as they are
    [finish] = _events(rw.feed(_chunk(0, finish="stop") + b"\n\n"))
    choice = json.loads(finish[6:])["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["logprobs"]["content"] == tag + eos
    # a stream cut short: what is held goes out as it came, before [DONE]
    rw = SseRewriter()
    held = _chunk(0, logprobs=eos)
    assert rw.feed(held + b"\n\n") == b""
    assert _events(rw.feed(b"data: [DONE]\n\n")) == [held, b"data: [DONE]"]
