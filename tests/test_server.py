"""The foundation end to end: the real server, the offline engine, the plugin proving itself."""

from __future__ import annotations

import json

import httpx
import openai

from tests.support.server import engine_kv_report, wait_kv_idle


def test_health_and_plugin_confirmed_by_scheduler(server):
    assert httpx.get(server.base_url + "/health", timeout=30).status_code == 200
    info = httpx.get(server.base_url + "/npr/info", timeout=10).json()
    assert info["sglang_version"] == "0.5.23"
    assert info["scheduler"]["active"] is True
    assert "after:sglang.srt.managers.scheduler.Scheduler.get_init_info" in info["scheduler"]["hooks"]
    assert set(info["schemas"]) >= {"parallel", "npr", "multiverse"}
    assert info["attention"] == {"backend": "torch_native", "page_size": 1}  # named by the CPU profile
    # the CPU profile's scheduler sleeps when idle instead of polling a core
    assert httpx.get(server.base_url + "/server_info", timeout=30).json()["sleep_on_idle"] is True


def test_models_lists_served_model(server, default_model_dir):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")
    ids = [m.id for m in client.models.list().data]
    assert ids == ["SmolLM2-135M-Instruct"]  # the embedded model by its name, not its cache path


def test_served_model_name_only_for_the_embedded_model(default_model_dir, tmp_path):
    from npr_engine.launcher import prepare

    def name(argv: list[str]) -> str | None:
        _, sglang_argv = prepare(["--port", "0", *argv])
        flags = [sglang_argv[i + 1] for i, a in enumerate(sglang_argv) if a == "--served-model-name"]
        return flags[-1] if flags else None

    assert name([]) == "SmolLM2-135M-Instruct"
    assert name(["--model", str(default_model_dir)]) == "SmolLM2-135M-Instruct"
    assert name(["--served-model-name", "mine"]) == "mine"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                                       "num_attention_heads": 4, "num_hidden_layers": 2}))
    assert name(["--model", str(tmp_path)]) is None  # SGLang's own: the path


def test_chat_completion_plain_and_streaming(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="none")
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content.strip()
    assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
    server.assert_kv_idle()


def test_offline_engine_batch(engine):
    info = engine.get_server_info()
    assert info["npr_plugin"]["active"] is True
    prompts = ["The capital of France is", "1, 2, 3,", "Once upon a time"]
    outputs = engine.generate(prompts, {"max_new_tokens": 6, "temperature": 0})
    assert len(outputs) == 3
    assert all(o["text"] and o["meta_info"]["completion_tokens"] == 6 for o in outputs)
    wait_kv_idle(lambda: engine_kv_report(engine))
