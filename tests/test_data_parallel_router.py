"""`--dp-size 2` behind SGLang's router (`smg`, the router's current name on PyPI): our
request field and response fields pass through the router, both data-parallel ranks
fork and join, and every rank is left with clean KV."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from npr_engine.kv_report import idle_problems
from tests.support.server import free_port


@pytest.fixture(scope="module")
def dp_server(tiny_model_dir):
    from tests.support.server import serving

    with serving(tiny_model_dir, 4096, "--dp-size", "2", env={"SGLANG_CPU_OMP_THREADS_BIND": "0|1"}) as proc:
        yield proc


@pytest.fixture(scope="module")
def router(dp_server):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "smg.launch_router", "--host", "127.0.0.1", "--port", str(port),
                             "--worker-urls", dp_server.base_url, "--policy", "round_robin"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, "router exited"
            try:
                if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _every_rank_idle(server, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while True:
        states = httpx.get(server.base_url + "/server_info", timeout=30).json()["internal_states"]
        problems = [p for s in states for p in idle_problems(s["npr_kv"])]
        if not problems or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(states) == 2 and not problems, problems


def test_parallel_fields_pass_through_the_router_to_both_ranks(router, dp_server):
    model = httpx.get(router + "/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "Think in parallel."}], "max_tokens": 40,
            "temperature": 0, "parallel": {"force": True, "paths": 2, "max_path_tokens": 12}}
    for _ in range(4):  # round robin over both ranks
        reply = httpx.post(router + "/v1/chat/completions", json=body, timeout=300).json()
        (block,) = reply["choices"][0]["parallel_trace"]["blocks"]
        assert block["width"] == 2 and block["fallback"] is None, block
        assert reply["usage"]["critical_path_tokens"] < reply["usage"]["completion_tokens"]
    events = []
    with httpx.stream("POST", router + "/v1/chat/completions", json={**body, "stream": True}, timeout=300) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    choices = [c for e in events for c in e.get("choices", [])]
    assert any(c.get("branch_deltas") for c in choices)
    assert any(c.get("parallel_trace") for c in choices)
    bad = httpx.post(router + "/v1/chat/completions", json={**body, "parallel": {"paths": 99}}, timeout=60)
    assert bad.status_code == 400 and "parallel.paths" in bad.text
    _every_rank_idle(dp_server)
    states = httpx.get(dp_server.base_url + "/server_info", timeout=30).json()["internal_states"]
    assert all(s["npr_kv"]["forward_ct"] > 0 for s in states)  # both ranks served
