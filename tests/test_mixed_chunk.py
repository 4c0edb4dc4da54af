"""`--enable-mixed-chunk`: decode rows ride along with prefill chunks as one-token
extends (ForwardMode.MIXED), branches and joined parents included, with their shared
positions (patches/positions.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.engine import assert_idle, forced, params

PROMPT = "Explain why the sky is blue."
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # ~400 tokens: 7 chunks of 64


@pytest.fixture(scope="module")
def mixed(default_model_dir):
    from tests.support.engine import start_engine, stop_engine

    llm = start_engine(
        model_path=str(default_model_dir), device="cpu", attention_backend="torch_native",
        disable_cuda_graph=True, dtype="float32", max_total_tokens=8192, random_seed=0, log_level="error",
        enable_mixed_chunk=True, chunked_prefill_size=64,
        # NOTE: in-process settings are global: keep the session engine's (scripted tests).
        enable_custom_logit_processor=True,
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


def _shifted(llm) -> dict:
    return llm.get_server_info()["internal_states"][0]["npr_positions_shifted"]


def test_blocks_decoded_in_mixed_batches_match_a_run_alone(mixed):
    request = params(60, forced(3, max_path_tokens=12))
    alone = mixed.generate(PROMPT, request)  # nothing to mix with
    before = _shifted(mixed).get("mixed", 0)

    async def together():
        async def later(delay: float, i: int):
            await asyncio.sleep(delay)
            return await mixed.async_generate(f"{i}. {LONG}", params(4))

        return await asyncio.gather(mixed.async_generate(PROMPT, request),
                                    *(later(0.2 * i, i) for i in range(6)))

    block, *plain = mixed.loop.run_until_complete(together())
    assert block["text"] == alone["text"]
    assert block["meta_info"]["npr_trace"]["blocks"] == alone["meta_info"]["npr_trace"]["blocks"]
    # Rows with shifted positions (branches, joined parents) went through MIXED steps.
    assert _shifted(mixed).get("mixed", 0) > before
    assert all(p["meta_info"]["completion_tokens"] == 4 for p in plain)
    assert_idle(mixed)
