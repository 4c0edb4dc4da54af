"""Helpers for tests driving the offline engine."""

from __future__ import annotations

import os

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


def start_engine(env: dict[str, str] | None = None, **kwargs):
    """An sglang.Engine whose own subprocesses are remembered, for `stop_engine`.

    It sleeps when idle, as the CPU profile's servers do: a polling idle scheduler takes
    a whole core, and the engines of a module stay up while other work runs. `env`:
    variables its scheduler process reads at start-up, restored once it is running."""
    import sglang

    kwargs.setdefault("sleep_on_idle", True)
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        before = _child_pids()
        llm = sglang.Engine(**kwargs)
        llm._npr_test_pids = _child_pids() - before
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    return llm


def stop_engine(llm) -> None:
    """Stop an engine from `start_engine`, and only it.

    NOTE: Engine.shutdown() kills every descendant of this process (SGLang 0.5.23's
    kill_process_tree(os.getpid())), which would take down the session's test server
    and the session engine along with a module's own engine.
    """
    import psutil

    watchdog = getattr(llm.tokenizer_manager, "_subprocess_watchdog", None)
    if watchdog is not None:
        watchdog.stop()  # it treats a dead subprocess as a crash of the whole process
    procs = []
    for pid in llm._npr_test_pids:
        try:
            root = psutil.Process(pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=60)


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}
