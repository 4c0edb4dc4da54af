"""Launcher input errors (one line, non-zero exit, nothing left running) and a broken hook."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.support.server import REPO, ServerProcess, free_port


def run_launcher(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "server.py"), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-2000:]
    assert needle in lines[0]


def test_missing_model_folder(tmp_path):
    assert_one_line_error(run_launcher("--model", str(tmp_path / "nope")), "model folder not found")


def test_folder_without_config(tmp_path):
    assert_one_line_error(run_launcher("--model", str(tmp_path)), "no config.json")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    assert_one_line_error(run_launcher("--model", str(tmp_path)), "not supported by SGLang")


def test_unknown_profile():
    assert_one_line_error(run_launcher("--profile", "tpu"), "--profile")


def test_unknown_schema():
    assert_one_line_error(run_launcher("--tag-schema", "nosuch"), "--tag-schema")


@pytest.mark.parametrize(("flags", "needle"), [
    (["--page-size", "16"], "NPR Engine needs --page-size 1"),
    (["--skip-tokenizer-init"], "NPR Engine cannot run with --skip-tokenizer-init"),
])
def test_refused_sglang_flags_stop_startup_with_one_error_line(default_model_dir, flags, needle):
    result = run_launcher("--model", str(default_model_dir), "--port", str(free_port()), *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]  # after SGLang's own warnings
    assert last.startswith(f"npr-server: error: {needle}"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_port_in_use(default_model_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_launcher("--model", str(default_model_dir), "--port", str(port))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.timeout(300)
def test_broken_hook_stops_startup(default_model_dir):
    proc = ServerProcess(
        ["--model", str(default_model_dir), "--port", str(free_port()), "--max-total-tokens", "2048"],
        env={"NPR_SELFTEST_BROKEN_HOOK": "1"},
    )
    proc.start()
    try:
        code = proc.proc.wait(timeout=240)
    finally:
        proc.stop()
    assert code != 0
    assert "plugin failed to install its SGLang hooks" in proc.log()
    assert "npr_no_such_method" in proc.log()
