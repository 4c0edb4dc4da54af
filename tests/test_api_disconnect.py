"""A client that disconnects mid-stream while a parallel block runs aborts the whole
unit (parent and branches): nothing leaks and the server keeps serving (issue 5)."""

from __future__ import annotations

import time

import httpx
import pytest

# Long enough that the block is still running when the client leaves.
BLOCK = {"force": True, "paths": 3, "max_path_tokens": 200}


def wait_for(condition, timeout: float = 60, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Tell me a long story about the sea."}]}),
    ("/v1/completions", {"prompt": "Once upon a time, far away,"}),
])
def test_disconnect_inside_a_block_aborts_the_unit(server, path, body):
    before = server.kv_report()
    request = {"model": "default", "max_tokens": 1500, "ignore_eos": True, "stream": True, "parallel": BLOCK, **body}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        with client.stream("POST", path, json=request) as resp:
            assert resp.status_code == 200
            # The three branches are decoding (the parked parent is outside the running batch).
            running = wait_for(lambda: (r := server.kv_report())["running"] >= 3 and r)
            assert running["rows_free"] <= running["rows_total"] - 4  # parent + 3 branch rows
        # Leaving the block closes the connection mid-stream.
    after = server.assert_kv_idle()
    # Aborted inside the block: far fewer steps than the 200-token paths alone would need.
    assert after["forward_ct"] - before["forward_ct"] < 150, (before, after)
    reply = httpx.post(server.base_url + "/v1/completions", timeout=60,
                       json={"model": "default", "prompt": "Hi", "max_tokens": 8, "parallel": {"force": True}})
    assert reply.status_code == 200 and reply.json()["choices"][0]["parallel_trace"]["blocks"]
    server.assert_kv_idle()
