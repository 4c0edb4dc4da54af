"""Grammar constraints and tools cannot be combined with parallel blocks yet (issue 5):
asked for together they are a 400 naming the field; without `parallel` blocks are off."""

from __future__ import annotations

import httpx
import pytest

CHAT = ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
COMPLETION = ("/v1/completions", {"prompt": "hi"})
TOOL = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
SCHEMA = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}

CONFLICTS = [
    (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
    (CHAT, {"response_format": {"type": "json_schema", "json_schema": SCHEMA}}, "response_format"),
    (CHAT, {"regex": "[a-z]+"}, "regex"),
    (CHAT, {"ebnf": 'root ::= "yes" | "no"'}, "ebnf"),
    (CHAT, {"tools": [TOOL]}, "tools"),
    (CHAT, {"tools": [TOOL], "tool_choice": "required"}, "tools"),
    (COMPLETION, {"response_format": {"type": "json_object"}}, "response_format"),
    (COMPLETION, {"json_schema": '{"type": "object"}'}, "json_schema"),
    (COMPLETION, {"regex": "[a-z]+"}, "regex"),
    (COMPLETION, {"ebnf": 'root ::= "yes" | "no"'}, "ebnf"),
]


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.base_url + path, json={"model": "default", "max_tokens": 6, **body}, timeout=120)


@pytest.mark.parametrize(("endpoint", "extra", "param"), CONFLICTS)
@pytest.mark.parametrize("ask", [{"parallel": {"force": True}}, {"parallel": True},
                                 {"custom_params": {"npr": {"paths": 3}}}])
def test_constraint_with_parallel_is_400_naming_the_field(server, endpoint, extra, param, ask):
    path, body = endpoint
    resp = post(server, path, {**body, **extra, **ask})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "cannot be combined with parallel" in error["message"] and error["code"] is None


@pytest.mark.parametrize(("endpoint", "extra"), [(CHAT, {"regex": "[a-z]+"}), (COMPLETION, {"regex": "[a-z]+"}),
                                                 (COMPLETION, {"response_format": {"type": "json_object"}})])
@pytest.mark.parametrize("ask", [{}, {"parallel": False}, {"parallel": {"enabled": False, "force": True}}])
def test_constraint_without_parallel_runs_with_blocks_off(server, endpoint, extra, ask):
    path, body = endpoint
    resp = post(server, path, {**body, **extra, **ask})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    # Blocks off: no trace at all, and `force` did not open a block under the grammar.
    assert "parallel_trace" not in choice
    text = choice["text"] if "text" in choice else choice["message"]["content"]
    assert "<parallel>" not in text
    if "regex" in extra:
        assert text.isalpha() and text.islower(), text


@pytest.mark.parametrize("extra", [{"response_format": {"type": "text"}}, {"tools": [TOOL], "tool_choice": "none"}])
def test_compatible_fields_keep_parallel(server, extra):
    path, body = CHAT
    resp = post(server, path, {**body, **extra, "max_tokens": 24,
                               "parallel": {"force": True, "paths": 2, "max_path_tokens": 6}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["parallel_trace"]["blocks"][0]["width"] == 2


@pytest.mark.parametrize("field", ["regex", "ebnf", "json_schema", "structural_tag"])
def test_native_generate_refuses_explicit_npr_with_a_grammar(server, field):
    grammar = {"regex": "[a-z]+", "ebnf": 'root ::= "a"', "json_schema": "{}", "structural_tag": "{}"}[field]
    params = {"max_new_tokens": 4, field: grammar, "custom_params": {"npr": {"force": True}}}
    for sampling in (params, [params]):
        text = "hi" if isinstance(sampling, dict) else ["hi"]
        resp = httpx.post(server.base_url + "/generate", json={"text": text, "sampling_params": sampling}, timeout=60)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == f"sampling_params.{field}"


def test_native_generate_grammar_with_npr_disabled_runs(server):
    params = {"max_new_tokens": 4, "temperature": 0, "regex": "[a-z]+", "custom_params": {"npr": {"enabled": False}}}
    resp = httpx.post(server.base_url + "/generate", json={"text": "hi", "sampling_params": params}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["text"].isalpha()
    server.assert_kv_idle()
