"""The `parallel` request field and response fields over HTTP (official openai client)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

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
     ({"positions": "sideways"}, "parallel.positions"), ({"paths": 9}, "parallel.paths"), ("yes", "parallel")],
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
