"""Requests that used to crash or misuse the server are refused with OpenAI-shaped 400s
(found while fuzzing the API, issue 5); the offline Engine raises RequestError for the
same inputs."""

from __future__ import annotations

import httpx
import pytest

VOCAB = 49152  # the default model's


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": [1, 2, VOCAB]}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], [3, -1]]}, "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "input_ids": [10**12]}, "input_ids"),
    ("/generate", {"input_ids": [5, VOCAB + 7], "sampling_params": {"max_new_tokens": 2}}, "input_ids"),
    ("/generate", {"input_ids": [[5], [-3]], "sampling_params": {"max_new_tokens": 2}}, "input_ids"),
])
def test_token_ids_outside_the_vocabulary_are_400_not_a_crash(server, path, body, param):
    # NOTE: SGLang 0.5.23 passes such ids to the embedding lookup, whose IndexError kills the scheduler.
    resp = httpx.post(server.base_url + path, json={"model": "default", "max_tokens": 2, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and "outside the vocabulary" in error["message"]
    ok = httpx.post(server.base_url + "/v1/completions", json={"prompt": [1, 2, VOCAB - 1], "max_tokens": 2},
                    timeout=60)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "hi", "parallel": {"schema": "/etc/hostname"}}, "parallel.schema"),
    ("/v1/completions", {"prompt": "hi", "custom_params": {"npr": {"schema": "/etc/hostname"}}},
     "custom_params.npr.schema"),
    ("/generate", {"text": "hi", "sampling_params": {"custom_params": {"npr": {"schema": "/etc/hostname"}}}},
     "sampling_params.custom_params.npr.schema"),
])
def test_schema_file_paths_are_not_read_for_clients(server, path, body, param):
    resp = httpx.post(server.base_url + path, json={"max_tokens": 2, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param and "unknown schema" in resp.json()["error"]["message"]


@pytest.mark.parametrize("processor", ["not json", '{"callable": "zz"}', '{"callable": "80049500"}', "[1]"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/generate"])
def test_broken_custom_logit_processor_is_400_not_a_crash(server, path, processor):
    # NOTE: SGLang 0.5.23 parses it in the scheduler while building a batch; an error there kills it.
    body = {"/v1/completions": {"prompt": "hi", "max_tokens": 2},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
            "/generate": {"text": "hi", "sampling_params": {"max_new_tokens": 2}}}[path]
    resp = httpx.post(server.base_url + path, json={**body, "custom_logit_processor": processor}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "custom_logit_processor"


def test_valid_custom_logit_processor_still_runs(server):
    from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor

    resp = httpx.post(server.base_url + "/v1/completions", timeout=60, json={
        "prompt": "hi", "max_tokens": 4, "custom_logit_processor": DisallowedTokensLogitsProcessor.to_str(),
        "custom_params": {"token_ids": [1]}})
    assert resp.status_code == 200, resp.text
    server.assert_kv_idle()


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "hi", "logprobs": VOCAB + 1}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True,
                              "top_logprobs": 10**6}, "top_logprobs"),
    ("/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": VOCAB + 5,
                   "sampling_params": {"max_new_tokens": 2}}, "top_logprobs_num"),
])
def test_top_logprobs_above_the_vocabulary_are_400_not_a_crash(server, path, body, param):
    # NOTE: SGLang 0.5.23's sampler calls topk(k) over the vocabulary; k > vocab kills the scheduler.
    resp = httpx.post(server.base_url + path, json={"model": "default", "max_tokens": 2, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param
    ok = httpx.post(server.base_url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "logprobs": 3},
                    timeout=60)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": ["", "hi"]}, "prompt"),
    ("/v1/completions", {"prompt": [[5, 6], []]}, "prompt"),
    ("/generate", {"text": "", "sampling_params": {"max_new_tokens": 2}}, "text"),
    ("/generate", {"text": ["hi", ""], "sampling_params": {"max_new_tokens": 2}}, "text"),
    ("/generate", {"input_ids": [], "sampling_params": {"max_new_tokens": 2}}, "input_ids"),
    ("/generate", {"input_ids": [[5], []], "sampling_params": {"max_new_tokens": 2}}, "input_ids"),
])
def test_empty_prompts_are_400_not_a_crash(server, path, body, param):
    # NOTE: SGLang 0.5.23 refuses only all-empty completion prompts; `["", "hi"]` or a
    # /generate text "" reached the forward with zero tokens and killed the scheduler.
    resp = httpx.post(server.base_url + path, json={"model": "default", "max_tokens": 2, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and "is empty" in error["message"]
    ok = httpx.post(server.base_url + "/v1/completions", json={"prompt": ["hi", "yo"], "max_tokens": 2},
                    timeout=60)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2, ok.text
    server.assert_kv_idle()


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"prompt": ["hi", ""]}, "text"),
    ({"input_ids": []}, "input_ids"),
    ({"input_ids": [5, VOCAB]}, "input_ids"),
    ({"prompt": "hi", "return_logprob": True, "top_logprobs_num": VOCAB + 1}, "top_logprobs_num"),
    ({"prompt": "hi", "custom_logit_processor": "not json"}, "custom_logit_processor"),
])
def test_offline_engine_raises_request_error_and_keeps_serving(engine, kwargs, param):
    from npr_engine.api.errors import RequestError
    from tests.support.engine import assert_idle

    with pytest.raises(RequestError) as refused:
        engine.generate(sampling_params={"max_new_tokens": 2}, **kwargs)
    assert refused.value.param == param
    assert engine.generate("hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2
    assert_idle(engine)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"prompt": "hi", "rid": []}),  # found by schemathesis: a 500 before
    ("/v1/completions", {"prompt": ["hi", "yo"], "rid": ["a"]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "rid": ["a"]}),
    ("/generate", {"text": "hi", "rid": 5, "sampling_params": {"max_new_tokens": 2}}),
])
def test_a_rid_that_does_not_fit_the_prompts_is_400(server, path, body):
    resp = httpx.post(server.base_url + path, json={"model": "default", "max_tokens": 2, **body}, timeout=60)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "rid"
    ok = httpx.post(server.base_url + "/v1/completions",
                    json={"prompt": ["hi", "yo"], "max_tokens": 2, "rid": ["rid-fit-a", "rid-fit-b"]}, timeout=60)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2, ok.text
    server.assert_kv_idle()
