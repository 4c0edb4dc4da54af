"""A second server, started with `--api-key`, for what the session server cannot show:
OpenAI-shaped 401s, and a bounded schemathesis run against the server's own OpenAPI
document (issue 5). The run lives here because a request that kills the server (it
found one: token ids outside the vocabulary) must not take the session server with it.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.modes import GenerationMode

from tests.conftest import ENGINE_KV_TOKENS
from tests.support.openapi_bounds import bounded_generation_document
from tests.support.server import ServerProcess, serving, wait_kv_idle

API_KEY = "npr-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
EXAMPLES = 100
BUDGET_S = 300


@pytest.fixture(scope="module")
def keyed_server(default_model_dir):
    with serving(default_model_dir, ENGINE_KV_TOKENS, "--api-key", API_KEY) as proc:
        yield proc


def kv_report(server: ServerProcess) -> dict:
    info = httpx.get(server.base_url + "/server_info", headers=AUTH, timeout=30).json()
    return info["internal_states"][0]["npr_kv"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    ("POST", "/v1/completions", {"prompt": "hi", "max_tokens": 4, "parallel": {"force": True}}),
    ("GET", "/v1/models", None),
])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}])
def test_missing_or_wrong_key_is_openai_shaped_401(keyed_server, method, path, body, headers):
    resp = httpx.request(method, keyed_server.base_url + path, json=body, headers=headers, timeout=30)
    assert resp.status_code == 401, resp.text
    assert resp.json() == {"error": {"message": resp.json()["error"]["message"], "type": "invalid_request_error",
                                     "param": None, "code": "invalid_api_key"}}
    assert "API key" in resp.json()["error"]["message"]


def test_openai_client_with_wrong_key_raises_authentication_error(keyed_server):
    client = openai.OpenAI(base_url=keyed_server.base_url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.completions.create(model="default", prompt="hi", max_tokens=4)
    assert info.value.code == "invalid_api_key"


def test_right_key_is_served(keyed_server):
    client = openai.OpenAI(base_url=keyed_server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=24, temperature=0,
        extra_body={"parallel": {"force": True, "paths": 2, "max_path_tokens": 6}},
    )
    assert reply.choices[0].model_extra["parallel_trace"]["blocks"][0]["width"] == 2
    assert client.models.list().data
    # Our own 400s keep their shape behind the key check.
    bad = httpx.post(keyed_server.base_url + "/v1/completions", headers=AUTH, timeout=30,
                     json={"prompt": "hi", "max_tokens": 4, "parallel": {"paths": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "parallel.paths"


def test_other_v1_errors_keep_sglang_bodies_behind_the_key(keyed_server):
    # /v1/score is not a generation endpoint: stock SGLang's error body, not OpenAI's.
    resp = httpx.post(keyed_server.base_url + "/v1/score", headers=AUTH, json={"query": 5}, timeout=30)
    assert 400 <= resp.status_code < 500, resp.text
    body = resp.json()
    assert not isinstance(body.get("error"), dict), body
    assert body.get("object") == "error" or "detail" in body, body
    # ...while its 401 is OpenAI's, like every /v1/ path.
    denied = httpx.post(keyed_server.base_url + "/v1/score", json={"query": 5}, timeout=30)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.timeout(BUDGET_S + 120)
def test_schemathesis_generation_endpoints_never_5xx(keyed_server):
    raw = httpx.get(keyed_server.base_url + "/openapi.json", headers=AUTH, timeout=30).json()
    schema = schemathesis.openapi.from_dict(bounded_generation_document(raw))
    # Positive mode only: negative mode needs minutes per example on SGLang's large request
    # models. Many positive bodies are still refused (SGLang's checks beyond the schema, and
    # `parallel` is also declared as "any value per key"), so the 4xx paths are exercised.
    cases = schema.as_strategy(GenerationMode.POSITIVE)
    failures: list[str] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + BUDGET_S

    @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def send(case):
        if time.monotonic() > deadline or any("Connection" in f for f in failures):
            return  # bounded in time as well as in examples; a dead server needs no more cases
        try:
            resp = case.call(base_url=keyed_server.base_url, headers=AUTH, timeout=120)
        except requests.RequestException as exc:
            failures.append(f"{case.path} {exc!r} for {json.dumps(case.body, default=str)[:2000]}")
            return
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        if resp.status_code >= 500:
            failures.append(f"{case.path} {resp.status_code} {resp.text[:500]} for "
                            f"{json.dumps(case.body, default=str)[:2000]}")

    send()
    assert not failures, "\n\n".join(failures)
    # The run reached generation and our own 400s.
    assert statuses.get(200, 0) >= 5 and statuses.get(400, 0) >= 5, statuses
    wait_kv_idle(lambda: kv_report(keyed_server))
