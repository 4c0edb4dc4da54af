"""Start and stop `server.py` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from npr_engine.kv_report import idle_problems

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`server.py ARGS` in its own process group, logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, command: list[str] | None = None):
        self.args = args
        self.command = command or [sys.executable, str(REPO / "server.py")]
        self.port = int(args[args.index("--port") + 1])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(os.environ.get("NPR_TEST_LOG_DIR", "/tmp")) / f"npr-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*self.command, *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if httpx.get(self.base_url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"server not ready in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()

    def kv_report(self) -> dict:
        info = httpx.get(self.base_url + "/server_info", timeout=30).json()
        return info["internal_states"][0]["npr_kv"]

    def assert_kv_idle(self, timeout: float = 30) -> dict:
        return wait_kv_idle(self.kv_report, timeout)


def wait_kv_idle(read_report, timeout: float = 30) -> dict:
    """Poll until the scheduler is idle, then assert nothing leaked."""
    deadline = time.time() + timeout
    while True:
        report = read_report()
        problems = idle_problems(report)
        if not problems or time.time() > deadline:
            break
        time.sleep(0.2)
    assert not problems, f"{problems}: {report}"
    return report


def engine_kv_report(engine) -> dict:
    return engine.get_server_info()["internal_states"][0]["npr_kv"]


@contextmanager
def serving(model_dir, kv_tokens: int, *extra: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """server.py on a free port (float32, custom logit processors on), ready, then stopped."""
    proc = ServerProcess(
        ["--model", str(model_dir), "--port", str(free_port()), "--dtype", "float32",
         "--max-total-tokens", str(kv_tokens), "--enable-custom-logit-processor", *extra],
        env=env,
    )
    with _running(proc):
        yield proc


@contextmanager
def _running(proc: ServerProcess) -> Iterator[ServerProcess]:
    proc.start()
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@contextmanager
def stock_serving(model_dir, kv_tokens: int) -> Iterator[ServerProcess]:
    """Stock SGLang's own server, the plugin not loaded (SGLANG_PLUGINS names no plugin
    of ours), with the CPU profile's flags, for tests that hold on both."""
    proc = ServerProcess(
        ["--model-path", str(model_dir), "--port", str(free_port()), "--dtype", "float32",
         "--max-total-tokens", str(kv_tokens), "--enable-custom-logit-processor", "--device", "cpu",
         "--attention-backend", "torch_native", "--disable-cuda-graph", "--sleep-on-idle"],
        env={"SGLANG_PLUGINS": "none-of-ours", "SGLANG_USE_CPU_ENGINE": "1"},
        command=[sys.executable, "-m", "sglang.launch_server"],
    )
    with _running(proc):
        yield proc
