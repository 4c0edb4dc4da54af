"""The `parallel` request field and response fields over HTTP (official openai client)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from npr_engine.grammar import get_schema

FORCED = {"force": True, "paths": 2, "max_path_tokens": 10}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_chat_completion_with_parallel_block(server, client, model):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2+2?"}],
        max_tokens=48, temperature=0, extra_body={"parallel": FORCED},
    )
    choice = reply.choices[0]
    trace = choice.model_extra["parallel_trace"]
    # Reasoning split: the paths are reasoning, the summary and the rest are content.
    reasoning = choice.message.model_extra["reasoning_content"]
    assert reasoning.startswith("<parallel><path>1: ") and "<path>2: " in reasoning
    assert "<summary>" not in reasoning and choice.message.content.startswith("<summary>")
    assert trace["blocks"][0]["width"] == 2
    assert trace["total_tokens"] == reply.usage.completion_tokens == 48
    assert reply.usage.model_extra["critical_path_tokens"] == trace["critical_path_tokens"] < 48
    server.assert_kv_idle()


def test_separate_reasoning_off_keeps_everything_in_content(server, client, model):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=48, temperature=0,
        extra_body={"parallel": FORCED, "separate_reasoning": False},
    )
    assert reply.choices[0].message.content.startswith("<parallel><path>1: ")
    assert not reply.choices[0].message.model_extra.get("reasoning_content")


def test_completion_with_parallel_block(server, client, model):
    reply = client.completions.create(
        model=model, prompt="The sky is", max_tokens=40, temperature=0, extra_body={"parallel": FORCED}
    )
    trace = reply.choices[0].model_extra["parallel_trace"]
    assert reply.choices[0].text.startswith("<parallel><path>1: ")
    assert [p["index"] for p in trace["blocks"][0]["paths"]] == [1, 2]
    server.assert_kv_idle()


def test_native_generate_takes_custom_params(server):
    body = {"text": "The sky is", "sampling_params": {"max_new_tokens": 40, "temperature": 0,
                                                      "custom_params": {"npr": FORCED}}}
    out = httpx.post(server.base_url + "/generate", json=body, timeout=120).json()
    assert out["text"].startswith("<parallel><path>1: ")
    assert out["meta_info"]["npr_trace"]["blocks"][0]["width"] == 2
    server.assert_kv_idle()


@pytest.mark.parametrize(
    ("parallel", "param"),
    [({"paths": 0}, "parallel.paths"), ({"schema": "nope"}, "parallel.schema"),
     ({"max_path_tokens": -3}, "parallel.max_path_tokens"), ({"paths": "two"}, "parallel.paths"),
     ({"positions": "sideways"}, "parallel.positions"), ({"paths": 9}, "parallel.paths"), ("yes", "parallel"),
     ({"branch_sampling": {"top_p": 0}}, "parallel.branch_sampling.top_p"),
     ({"branch_sampling": {"temp": 1.0}}, "parallel.branch_sampling.temp"),
     ({"branch_sampling": 0.5}, "parallel.branch_sampling")],
)
def test_invalid_parallel_options_are_400(server, model, parallel, param):
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        resp = httpx.post(server.base_url + path, json={"model": model, "max_tokens": 4, "parallel": parallel,
                                                        **body}, timeout=30)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert httpx.get(server.base_url + "/health", timeout=30).status_code == 200


def test_streaming_chat_carries_trace_in_final_chunk(server, client, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=48, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"parallel": FORCED},
    ))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning.startswith("<parallel><path>1: ") and content.startswith("<summary>")
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    trace = final[-1].choices[0].model_extra["parallel_trace"]
    assert trace["blocks"][0]["width"] == 2
    usage = [c.usage for c in chunks if c.usage is not None][-1]
    assert usage.model_extra["critical_path_tokens"] == trace["critical_path_tokens"]
    server.assert_kv_idle()


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/chat/completions", {"messages": []}),
     ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}),
     ("/v1/completions", {"prompt": "hi", "temperature": "hot"}),
     ("/v1/completions", "{not json")],
)
def test_sglang_errors_are_openai_shaped(server, model, path, body):
    payload = body if isinstance(body, str) else json.dumps({"model": model, **body})
    resp = httpx.post(server.base_url + path, content=payload, headers={"content-type": "application/json"},
                      timeout=30)
    assert 400 <= resp.status_code < 500, resp.text
    error = resp.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and "param" in error and "code" in error


def test_n_choices_each_get_their_blocks(server, client, model):
    reply = client.completions.create(model=model, prompt="The sky is", max_tokens=40, temperature=0.8, n=2,
                                      extra_body={"parallel": FORCED})
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.text.startswith("<parallel><path>1: ")
        assert choice.model_extra["parallel_trace"]["blocks"][0]["width"] == 2
    server.assert_kv_idle()


def test_metrics_exported_beside_sglangs(server, client, model):
    client.completions.create(model=model, prompt="Hi", max_tokens=40, temperature=0, extra_body={"parallel": FORCED})
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    for name in ("npr_blocks_forked_total", "npr_branches_total", "npr_joins_total", "npr_branch_tokens_total",
                 "npr_parked_parents", "npr_parallel_rate"):
        assert name in text, name
    forked = [line for line in text.splitlines() if line.startswith("npr_blocks_forked_total")]
    assert float(forked[0].split()[-1]) >= 1
    assert "sglang:" in text  # SGLang's own metrics are still there
    server.assert_kv_idle()


def test_branch_sampling_over_http(server, client, model):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=48, temperature=0,
        extra_body={"parallel": {**FORCED, "branch_sampling": {"temperature": 1.2, "top_p": 0.95}}},
    )
    assert reply.choices[0].model_extra["parallel_trace"]["blocks"][0]["width"] == 2
    server.assert_kv_idle()


# -- usage.reasoning_tokens ------------------------------------------------------------


def test_reasoning_token_count_follows_the_token_ids(default_model_dir):
    from transformers import AutoTokenizer

    from npr_engine.api.usage import count_reasoning_tokens

    tok = AutoTokenizer.from_pretrained(default_model_dir)

    def enc(*texts: str) -> list[int]:
        return [i for t in texts for i in tok.encode(t, add_special_tokens=False)]

    reasoning = enc("<parallel>", "<path>1: ", "Rayleigh scattering \u2600", "</path>", "<path>2: ", "blue", "</path>")
    ids = enc("Let me see.") + reasoning + enc("<summary>", "It scatters.", "</summary>", "</parallel>", " Done")
    ids.append(tok.eos_token_id)

    def decode(x):
        return tok.decode(x, skip_special_tokens=False)

    assert count_reasoning_tokens(ids, decode, get_schema("parallel")) == len(reasoning)
    assert count_reasoning_tokens(enc("no block here"), decode, get_schema("parallel")) == 0


def _chat(client, model, stream: bool, n: int, **extra) -> tuple[object, list, list[str]]:
    """(usage, trace per choice, reasoning_content per choice) of one chat request."""
    kwargs = {"model": model, "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 48,
              "temperature": 0, "n": n, "extra_body": extra}
    if not stream:
        reply = client.chat.completions.create(**kwargs)
        return (reply.usage, [c.model_extra.get("parallel_trace") for c in reply.choices],
                [c.message.model_extra.get("reasoning_content") or "" for c in reply.choices])
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    traces, reasoning = [None] * n, [""] * n
    for choice in (c for chunk in chunks for c in chunk.choices):
        reasoning[choice.index] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
        traces[choice.index] = traces[choice.index] or (choice.model_extra or {}).get("parallel_trace")
    return [c.usage for c in chunks if c.usage is not None][-1], traces, reasoning


def _reported(usage) -> tuple[int, int]:
    details = usage.completion_tokens_details
    return usage.model_extra["reasoning_tokens"], details.reasoning_tokens if details else 0


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [1, 2])
def test_usage_counts_the_tokens_of_reasoning_content(server, client, model, stream, n):
    usage, traces, reasoning = _chat(client, model, stream, n, parallel=FORCED)
    # Greedy: the n choices are the same reply, and the usage is their sum.
    assert len(reasoning) == n and len(set(reasoning)) == 1 and reasoning[0].startswith("<parallel><path>1: ")
    # A forced block opens the reply: its open tag and its paths are the reasoning.
    block = next(t for t in traces if t is not None)["blocks"][0]
    expected = n * (block["fork_offset"] + sum(p["tokens"] for p in block["paths"]))
    assert expected > 0 and _reported(usage) == (expected, expected)
    server.assert_kv_idle()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("extra", [{"parallel": FORCED, "separate_reasoning": False}, {}])
def test_usage_has_no_reasoning_tokens_without_reasoning_content(server, client, model, stream, extra):
    usage, _, reasoning = _chat(client, model, stream, 1, **extra)
    assert reasoning == [""] and usage.completion_tokens > 0
    assert _reported(usage) == (0, 0)
    server.assert_kv_idle()
