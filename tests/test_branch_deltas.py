"""Live `choices[i].branch_deltas` in streamed chat completions (DESIGN.md section 6)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import openai
import pytest

from npr_engine.api.stream import SseRewriter, record_deltas
from npr_engine.sched.deltas import note_branch_text, take_deltas

FORCED = {"force": True, "paths": 3, "max_path_tokens": 12}


def _branch(root, block: int, path: int, depth: int = 1):
    unit = SimpleNamespace(root=SimpleNamespace(req=root))
    return SimpleNamespace(unit=unit, block=SimpleNamespace(trace=SimpleNamespace(id=block)),
                           path=SimpleNamespace(index=path), depth=depth)


def test_scheduler_side_merges_text_per_path_for_streaming_roots_only():
    root, quiet = SimpleNamespace(stream=True), SimpleNamespace(stream=False)
    for text in ("<path>1: ", "a", "b"):
        note_branch_text(_branch(root, 0, 1), text)
    note_branch_text(_branch(root, 1, 2, depth=2), "x")
    note_branch_text(_branch(quiet, 0, 1), "never sent")
    assert take_deltas(root) == [{"block": 0, "path": 1, "depth": 1, "text": "<path>1: ab"},
                                 {"block": 1, "path": 2, "depth": 2, "text": "x"}]
    assert take_deltas(root) == [] and take_deltas(quiet) == []


def test_rewriter_attaches_pending_deltas_to_the_next_event_of_that_request():
    record_deltas("req-d", [{"block": 0, "path": 1, "depth": 1, "text": "<path>1: hi"}])
    other = b'data: {"id": "req-e", "choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
    mine = b'data: {"id": "req-d", "choices": [{"index": 0, "delta": {"content": ""}}]}\n\n'
    rewriter = SseRewriter()
    assert rewriter.feed(other) == other  # another request's events pass unchanged
    out = json.loads(rewriter.feed(mine)[6:])
    assert out["choices"][0]["branch_deltas"] == [{"block": 0, "path": 1, "depth": 1, "text": "<path>1: hi"}]
    assert rewriter.feed(mine) == mine  # sent once


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")


def test_branch_deltas_stream_while_the_block_runs(server, client):
    model = client.models.list().data[0].id
    request = dict(model=model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=60,
                   temperature=0, extra_body={"parallel": FORCED})
    chunks = [c.choices[0] for c in client.chat.completions.create(**request, stream=True) if c.choices]
    deltas = [(c.model_extra or {}).get("branch_deltas") or [] for c in chunks]
    content = [c.delta.content or "" for c in chunks]
    reasoning = [(c.delta.model_extra or {}).get("reasoning_content") or "" for c in chunks]
    summary_at = next(i for i, text in enumerate(content) if "<summary>" in text)
    live = [i for i, d in enumerate(deltas) if d]
    # Live: several chunks carry branch text, all before the summary is streamed,
    # and chunks that carry only branch text move no flattened text.
    assert len(live) > 1 and live[-1] < summary_at
    assert any(content[i] == reasoning[i] == "" for i in live)
    per_path: dict[int, str] = {}
    for item in (d for chunk_deltas in deltas for d in chunk_deltas):
        assert (item["block"], item["depth"]) == (0, 1)
        per_path[item["path"]] = per_path.get(item["path"], "") + item["text"]
    assert sorted(per_path) == [1, 2, 3]
    for i, text in per_path.items():
        assert text.startswith(f"<path>{i}: ") and text.endswith("</path>")
    # Each path's deltas are exactly its text in the flattened output, which is unchanged.
    assert "".join(reasoning) == "<parallel>" + "".join(per_path[i] for i in (1, 2, 3))
    reply = client.chat.completions.create(**request).choices[0].message
    assert "".join(reasoning) == reply.model_extra["reasoning_content"]
    assert "".join(content) == reply.content
    assert chunks[-1].model_extra["parallel_trace"]["blocks"][0]["width"] == 3
    server.assert_kv_idle()


def test_branch_deltas_stream_in_completions_too(server, client):
    model = client.models.list().data[0].id
    stream = client.completions.create(model=model, prompt="The sky is", max_tokens=60, temperature=0,
                                       extra_body={"parallel": FORCED}, stream=True)
    chunks = [c.choices[0] for c in stream if c.choices]
    deltas = [(c.model_extra or {}).get("branch_deltas") or [] for c in chunks]
    text = [c.text or "" for c in chunks]
    summary_at = next(i for i, t in enumerate(text) if "<summary>" in t)
    live = [i for i, d in enumerate(deltas) if d]
    assert len(live) > 1 and live[-1] < summary_at
    per_path: dict[int, str] = {}
    for item in (d for chunk_deltas in deltas for d in chunk_deltas):
        per_path[item["path"]] = per_path.get(item["path"], "") + item["text"]
    assert "".join(text).startswith("<parallel>" + "".join(per_path[i] for i in (1, 2, 3)))
    server.assert_kv_idle()
