"""Nested blocks (depth 2) driven by a scripted logit processor: exact text and trace."""

from __future__ import annotations

from npr_engine.grammar import get_schema
from tests.support.engine import assert_idle
from tests.support.scripted import ScriptedTags

PROMPT = "Plan two approaches."


def nested_script(tokenizer):
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    schema = get_schema("parallel")

    def path(i: int, *parts: list[int]) -> list[int]:
        return enc(schema.header(i)) + [t for part in parts for t in part]

    n1 = path(1, enc("x</path>"))
    n2 = path(2, enc("y</path>"))
    b1 = path(1, enc("A <parallel>"), n1, n2, enc("<summary>"), enc("B</summary></parallel></path>"))
    b2 = path(2, enc("C</path>"))
    root = enc("Go <parallel>") + b1 + b2 + enc("<summary>") + enc("done</summary></parallel> end")
    return {"": root, "1": b1, "2": b2, "1.1": n1, "1.2": n2}


def test_nested_block_flattens_and_traces(engine):
    tokenizer = engine.tokenizer_manager.tokenizer
    script = nested_script(tokenizer)
    root = script[""]
    sampling = {
        "max_new_tokens": len(root) + 8, "temperature": 0,
        "custom_params": {"npr": {"paths": 2}, "script": script, "eos": tokenizer.eos_token_id},
    }
    out = engine.generate(PROMPT, sampling, custom_logit_processor=ScriptedTags().to_str())
    assert out["output_ids"][: len(root)] == root
    assert out["text"].startswith(tokenizer.decode(root))
    trace = out["meta_info"]["npr_trace"]
    outer, inner = trace["blocks"]
    assert (outer["depth"], outer["width"], outer["parent_block"]) == (1, 2, None)
    assert (inner["depth"], inner["parent_block"], inner["parent_path"]) == (2, outer["id"], 1)
    assert [p["tokens"] for p in outer["paths"]] == [len(script["1"]), len(script["2"])]
    assert [p["tokens"] for p in inner["paths"]] == [len(script["1.1"]), len(script["1.2"])]
    assert all(p["finish"] == "close" for b in (outer, inner) for p in b["paths"])
    inner_saving = len(script["1.1"]) + len(script["1.2"]) - max(len(script["1.1"]), len(script["1.2"]))
    path1_critical = len(script["1"]) - inner_saving
    outer_saving = len(script["1"]) + len(script["2"]) - max(path1_critical, len(script["2"]))
    assert trace["critical_path_tokens"] == trace["total_tokens"] - outer_saving
    assert_idle(engine)


def test_depth_limit_falls_back_to_sequential_text(engine):
    tokenizer = engine.tokenizer_manager.tokenizer
    script = nested_script(tokenizer)
    sampling = {
        "max_new_tokens": len(script[""]) + 8, "temperature": 0,
        "custom_params": {"npr": {"paths": 2, "max_depth": 1}, "script": script, "eos": tokenizer.eos_token_id},
    }
    out = engine.generate(PROMPT, sampling, custom_logit_processor=ScriptedTags().to_str())
    outer, inner = out["meta_info"]["npr_trace"]["blocks"]
    assert outer["fallback"] is None and inner["fallback"] == "depth" and inner["paths"] == []
    assert_idle(engine)
