"""`--tp 2` on SGLang's CPU engine: every rank runs the fork/join controller on its own
copy of the batch, so the sampled ids are synchronised across ranks
(sched/controller.py) and our metrics are counted once per model copy.

CPU facts (SGLang 0.5.23): ranks need `SGLANG_CPU_OMP_THREADS_BIND` when dp x tp x pp
exceeds the NUMA nodes (one here), and all-reduce goes through gloo. The tiny tagged
Qwen3 (4 query / 2 KV heads) splits evenly over two ranks.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.test_real_formats import MULTIVERSE_TEXT
from tests.test_real_formats_http import _script_fields


@pytest.fixture(scope="module")
def tp_server(tiny_model_dir):
    from tests.support.server import serving

    with serving(tiny_model_dir, 4096, "--tp-size", "2", env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}) as proc:
        yield proc


def _forked_total(server) -> float:
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    found = re.findall(r"^npr_blocks_forked_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return sum(float(v) for v in found)


def test_blocks_under_tensor_parallelism(tp_server, tiny_model_dir):
    info = httpx.get(tp_server.base_url + "/server_info", timeout=30).json()
    assert info["tp_size"] == 2
    before = _forked_total(tp_server)
    # A nested Multiverse block, written by the model as trained: the exact text.
    body = {"model": "default", "messages": [{"role": "user", "content": "What is 3 + 4?"}],
            "separate_reasoning": False, **_script_fields(tiny_model_dir, "multiverse")}
    reply = httpx.post(tp_server.base_url + "/v1/chat/completions", json=body, timeout=300).json()
    assert reply["choices"][0]["message"]["content"] == MULTIVERSE_TEXT, reply
    blocks = reply["choices"][0]["parallel_trace"]["blocks"]
    assert [(b["depth"], b["width"], b["fallback"]) for b in blocks] == [(1, 2, None), (2, 2, None)]
    # A forced 3-path block sampled at temperature 0.9: ranks that drew different tokens
    # would fork or close at different steps and hang; synchronised, it completes.
    body = {"model": "default", "messages": [{"role": "user", "content": "Think in parallel."}],
            "max_tokens": 48, "temperature": 0.9, "seed": 7, "parallel": {"force": True, "paths": 3}}
    reply = httpx.post(tp_server.base_url + "/v1/chat/completions", json=body, timeout=300).json()
    (block,) = reply["choices"][0]["parallel_trace"]["blocks"]
    assert block["width"] == 3 and block["fallback"] is None, block
    # Counted once per model copy (rank 0), not once per rank: 3 forks.
    assert _forked_total(tp_server) - before == 3
    tp_server.assert_kv_idle()
