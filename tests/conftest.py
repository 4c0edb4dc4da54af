"""Shared fixtures: one HTTP server and one offline engine per test session.

Both serve the embedded default model on SGLang's CPU engine in float32 (greedy
outputs under bf16 can drift between a cached and an uncached prefix).
"""

from __future__ import annotations

import os

# NOTE: before anything imports SGLang: its CPU engine is chosen at import time.
os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
# Scheduler processes record fork/join slot ids so tests can assert them exactly.
os.environ.setdefault("NPR_DEBUG_SLOTS", "1")
# SGLang's own KV invariant check after every step, parked parents included.
os.environ.setdefault("SGLANG_ENABLE_STRICT_MEM_CHECK_DURING_BUSY", "1")

import pytest  # noqa: E402


def _import_kernels_for_this_machine() -> None:
    """Bind the Triton kernels to the interpreter when there is no GPU.

    Triton picks interpreter or compiler when a kernel is decorated, i.e. at the first
    import of npr_engine.kernels, which several test modules (and the plugin) may
    trigger. The variable is set only for that import, so SGLang processes started by
    the tests never run Triton in the interpreter.
    """
    import torch

    if torch.cuda.is_available() or "TRITON_INTERPRET" in os.environ:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import npr_engine.kernels  # noqa: F401
    finally:
        del os.environ["TRITON_INTERPRET"]


_import_kernels_for_this_machine()

from tests.support.server import serving  # noqa: E402

ENGINE_KV_TOKENS = 8192


@pytest.fixture(scope="session")
def default_model_dir():
    from npr_engine.default_model import default_model_dir as resolve

    return resolve()


@pytest.fixture(scope="session")
def server(default_model_dir):
    with serving(default_model_dir, ENGINE_KV_TOKENS) as proc:
        yield proc


@pytest.fixture(scope="session")
def engine(default_model_dir):
    from tests.support.engine import start_engine, stop_engine

    llm = start_engine(
        model_path=str(default_model_dir),
        device="cpu",
        attention_backend="torch_native",
        disable_cuda_graph=True,
        dtype="float32",
        max_total_tokens=ENGINE_KV_TOKENS,
        enable_custom_logit_processor=True,
        random_seed=0,
        log_level="error",
    )
    try:
        yield llm
    finally:
        stop_engine(llm)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir):
    """A tiny random Qwen3 whose tokenizer carries NPR's and Multiverse's tags as special
    tokens, as the real models' tokenizers do."""
    from tests.support.tiny_models import tiny_qwen3

    return tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3-tags"), default_model_dir, seed=3, special_tags=True)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(model dir, offline engine) of `tiny_model_dir`.

    NOTE: module scope: an idle SGLang scheduler keeps polling (most of a core on these
    machines), so an engine kept for the whole session slows every later module."""
    from tests.support.engine import start_engine, stop_engine

    llm = start_engine(
        model_path=str(tiny_model_dir), device="cpu", attention_backend="torch_native", disable_cuda_graph=True,
        dtype="float32", max_total_tokens=4096, enable_custom_logit_processor=True, random_seed=0,
        log_level="error",
    )
    try:
        yield tiny_model_dir, llm
    finally:
        stop_engine(llm)
