"""Serving NPR and Multiverse as trained, over HTTP (chat, streamed chat, completions,
`/generate`): the replies of tests/test_real_formats.py through `server.py`.

A module of its own so that the tiny model's server and its offline engine (the other
module's) never poll side by side.
"""

from __future__ import annotations

import pytest

from tests.test_real_formats import NPR_TEXT, NPR_WIDTHS, SCRIPTS


@pytest.fixture(scope="module")
def tagged_server(tiny_model_dir):
    from tests.support.server import serving

    with serving(tiny_model_dir, 4096, "--tag-schema", "npr", "--enable-cache-report") as proc:
        yield proc


def _script_fields(model_dir, schema: str, tail: str = "", head: str = "") -> dict:
    """Request fields that make the model write the family's reply (then EOS)."""
    from transformers import AutoTokenizer

    from tests.support.scripted import ScriptedTags
    from tests.support.scripts import ScriptBuilder

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    parts = ([head] if head else []) + SCRIPTS[schema][0]() + ([tail] if tail else [])
    scripts = ScriptBuilder(tokenizer, schema).build(parts)
    return {"custom_logit_processor": ScriptedTags().to_str(),
            "custom_params": {"script": scripts, "eos": tokenizer.eos_token_id},
            "parallel": {"schema": schema}, "max_tokens": len(scripts[""]) + 8, "temperature": 0}


# What the npr reasoning split gives: whole blocks are reasoning, the rest content.
NPR_BLOCKS = [NPR_TEXT[s:e + len("</takeaway>")] for s, e in
              zip([i for i in range(len(NPR_TEXT)) if NPR_TEXT.startswith("<guideline>", i)],
                  [i for i in range(len(NPR_TEXT)) if NPR_TEXT.startswith("</takeaway>", i)], strict=True)]


def test_chat_reply_and_reasoning_split_keep_every_tag(tagged_server, tiny_model_dir):
    import httpx

    body = {"model": "default", "messages": [{"role": "user", "content": "What is 3 + 4?"}],
            **_script_fields(tiny_model_dir, "npr")}
    reply = httpx.post(tagged_server.base_url + "/v1/chat/completions", json=body, timeout=120).json()
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] == "".join(NPR_BLOCKS)
    assert message["content"].strip() == "The answer is 4."
    # Usage counts the tokens that went to reasoning_content (the blocks' tokens).
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    block_tokens = sum(len(tokenizer.encode(b, add_special_tokens=False)) for b in NPR_BLOCKS)
    usage = reply["usage"]
    assert usage["reasoning_tokens"] == usage["completion_tokens_details"]["reasoning_tokens"] == block_tokens
    plain = httpx.post(tagged_server.base_url + "/v1/chat/completions", timeout=120,
                       json={**body, "separate_reasoning": False}).json()
    assert plain["choices"][0]["message"]["content"] == NPR_TEXT
    tagged_server.assert_kv_idle()


def test_streamed_chat_deltas_and_branch_deltas_concatenate_to_the_text(tagged_server, tiny_model_dir):
    import json

    import httpx

    body = {"model": "default", "messages": [{"role": "user", "content": "What is 3 + 4?"}], "stream": True,
            "separate_reasoning": False, **_script_fields(tiny_model_dir, "npr")}
    def stream(body: dict) -> tuple[str, str, dict]:
        content, reasoning, paths = "", "", {}
        with httpx.stream("POST", tagged_server.base_url + "/v1/chat/completions", json=body, timeout=120) as resp:
            for line in resp.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choice = (json.loads(line[6:]).get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                for d in choice.get("branch_deltas") or []:
                    paths[(d["block"], d["path"])] = paths.get((d["block"], d["path"]), "") + d["text"]
        return content, reasoning, paths

    content, _, paths = stream(body)
    assert content == NPR_TEXT
    assert len(paths) == sum(NPR_WIDTHS)
    assert paths[(0, 1)] == "<step>\n1: small cases give 4.\n</step>\n"
    assert paths[(1, 5)] == "<step>\n5: E.\n</step>\n"
    assert all(text in NPR_TEXT for text in paths.values())
    content, reasoning, _ = stream({**body, "separate_reasoning": True})
    assert reasoning == "".join(NPR_BLOCKS) and content.strip() == "The answer is 4."
    tagged_server.assert_kv_idle()


@pytest.mark.parametrize("schema", ["npr", "multiverse"])
def test_completions_and_generate_return_the_trained_text(tagged_server, tiny_model_dir, schema):
    import json

    import httpx

    fields = _script_fields(tiny_model_dir, schema)
    base = tagged_server.base_url
    done = httpx.post(base + "/v1/completions", json={"model": "default", "prompt": "Q:", **fields},
                      timeout=120).json()
    assert done["choices"][0]["text"] == SCRIPTS[schema][1]
    streamed = ""
    with httpx.stream("POST", base + "/v1/completions", timeout=120,
                      json={"model": "default", "prompt": "Q:", "stream": True, **fields}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                streamed += "".join(c.get("text") or "" for c in json.loads(line[6:]).get("choices") or [])
    assert streamed == SCRIPTS[schema][1]
    sampling = {"max_new_tokens": fields["max_tokens"], "temperature": 0,
                "custom_params": {**fields["custom_params"], "npr": fields["parallel"]}}
    native = httpx.post(base + "/generate", timeout=120, json={
        "text": "Q:", "sampling_params": sampling, "custom_logit_processor": fields["custom_logit_processor"]}).json()
    assert native["text"] == SCRIPTS[schema][1]
    tagged_server.assert_kv_idle()


def test_other_special_tokens_follow_skip_special_tokens(tagged_server, tiny_model_dir):
    import httpx

    fields = _script_fields(tiny_model_dir, "npr", tail="<|im_start|>")
    sampling = {"max_new_tokens": fields["max_tokens"], "temperature": 0,
                "custom_params": {**fields["custom_params"], "npr": fields["parallel"]}}
    texts = []
    for skip in (True, False):
        native = httpx.post(tagged_server.base_url + "/generate", timeout=120, json={
            "text": "Q:", "sampling_params": {**sampling, "skip_special_tokens": skip},
            "custom_logit_processor": fields["custom_logit_processor"]}).json()
        texts.append(native["text"])
    assert texts[0] == NPR_TEXT  # the chat marker is stripped, every tag kept
    assert texts[1] == NPR_TEXT + "<|im_start|>"
    tagged_server.assert_kv_idle()


def test_second_turn_hits_the_cache_for_the_reply_before_its_first_fork(tagged_server, tiny_model_dir):
    """Multi-turn: the causal part of a finished reply (up to its first fork) stays in the
    radix tree, so a client that sends the reply back gets it from the cache."""
    import httpx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    head, prompt = "First, a plan.\n", "Q: what is 3 + 4?\nA:"
    fields = _script_fields(tiny_model_dir, "npr", head=head)
    first = httpx.post(tagged_server.base_url + "/v1/completions", timeout=120,
                       json={"model": "default", "prompt": prompt, **fields}).json()
    reply = first["choices"][0]["text"]
    assert reply == head + NPR_TEXT
    second = httpx.post(tagged_server.base_url + "/v1/completions", timeout=120,
                        json={"model": "default", "prompt": prompt + reply, "max_tokens": 1}).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The first fork is at NPR's first `</guideline>`: its token had no KV yet.
    before_fork = reply[: reply.index("</guideline>")]
    expected = len(tokenizer.encode(prompt + before_fork, add_special_tokens=False))
    assert len(tokenizer.encode(prompt, add_special_tokens=False)) + 10 < expected <= cached, (expected, cached)
    # ...and nothing after it: the joined paths never saw each other, unlike a causal prefill.
    assert cached < expected + 3
    tagged_server.assert_kv_idle()
