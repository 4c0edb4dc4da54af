"""Helpers for tests driving the offline engine."""

from __future__ import annotations

from tests.support.server import engine_kv_report, wait_kv_idle


def forced(paths: int = 2, **extra) -> dict:
    return {"npr": {"force": True, "paths": paths, **extra}}


def params(max_new_tokens: int, npr: dict | None = None, **extra) -> dict:
    p = {"max_new_tokens": max_new_tokens, "temperature": 0, **extra}
    if npr is not None:
        p["custom_params"] = npr
    return p


def debug_events(engine, rid: str | None = None) -> list[dict]:
    events = engine.get_server_info()["internal_states"][0].get("npr_debug", [])
    return [e for e in events if rid is None or e.get("rid") == rid]


def assert_idle(engine) -> dict:
    return wait_kv_idle(lambda: engine_kv_report(engine))
