"""`server.py` / `npr-server`: SGLang's OpenAI-compatible HTTP server with our plugin.

Everything that can be checked before SGLang starts is checked here, so bad input ends
with one line on stderr, a non-zero exit and no child process left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path

from npr_engine.profiles import PROFILES, default_profile, has_flag, sglang_flags

EXIT_BAD_INPUT = 2


class LaunchError(Exception):
    """Bad launcher input; the message is the one line the user sees."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, not usage + message
        raise LaunchError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="npr-server", description=__doc__, allow_abbrev=False)
    p.add_argument("--model", help="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--profile", choices=PROFILES, help="cpu or gpu (default: gpu if CUDA is available)")
    p.add_argument("--tag-schema", default=os.environ.get("NPR_TAG_SCHEMA", "parallel"),
                   help="tag schema: parallel, npr, multiverse, or a JSON file")
    return p


def resolve_model(model: str | None) -> Path:
    if model is None:
        from npr_engine.default_model import DefaultModelError, default_model_dir

        try:
            return default_model_dir()
        except DefaultModelError as exc:
            raise LaunchError(str(exc)) from exc
    path = Path(model).expanduser()
    if not path.is_dir():
        raise LaunchError(f"model folder not found: {path}")
    config = path / "config.json"
    if not config.is_file():
        raise LaunchError(f"not a Hugging Face model folder (no config.json): {path}")
    archs = json.loads(config.read_text()).get("architectures") or []
    _check_architectures(path, archs)
    return path.resolve()


def _check_architectures(path: Path, archs: list[str]) -> None:
    # SGLang logs every optional model it cannot import here; keep our error one line.
    sglang_logger = logging.getLogger("sglang")
    level = sglang_logger.level
    sglang_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sglang.srt.models.registry import ModelRegistry

            supported = ModelRegistry.get_supported_archs()
    finally:
        sglang_logger.setLevel(level)
    if not any(a in supported for a in archs):
        raise LaunchError(f"model architecture {archs or 'unknown'} in {path} is not supported by SGLang")


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LaunchError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def check_schema(name: str) -> None:
    from npr_engine.grammar.schemas import get_schema

    try:
        get_schema(name)
    except (ValueError, OSError) as exc:
        raise LaunchError(f"--tag-schema: {exc}") from exc


def prepare(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Validate launcher arguments; return them and the full SGLang argv."""
    args, passthrough = build_parser().parse_known_args(argv)
    args.profile = args.profile or default_profile()
    if args.profile == "cpu":
        # NOTE: must be set before SGLang is imported anywhere in this process.
        os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    check_schema(args.tag_schema)
    os.environ["NPR_TAG_SCHEMA"] = args.tag_schema
    model = resolve_model(args.model)
    check_port_free(args.host, args.port)
    sglang_argv = ["--model-path", str(model), "--host", args.host, "--port", str(args.port)]
    sglang_argv += sglang_flags(args.profile, model, passthrough)
    sglang_argv += _default_model_name(model, passthrough)
    return args, sglang_argv


def _default_model_name(model: Path, passthrough: list[str]) -> list[str]:
    """The embedded default model is served as `SmolLM2-135M-Instruct`, not as its cache
    path (clients and SGLang's router address it by that name); `--served-model-name`
    wins, and every other model keeps SGLang's own name (its path)."""
    from npr_engine.default_model import MODEL_NAME, DefaultModelError, default_model_dir

    if has_flag(passthrough, "--served-model-name"):
        return []
    try:
        is_default = model == default_model_dir().resolve()
    except DefaultModelError:  # not installed: nothing to name
        return []
    return ["--served-model-name", MODEL_NAME] if is_default else []


def _announce_when_ready(host: str, port: int) -> None:
    url_host = f"[{host}]" if ":" in host else host
    base = f"http://{url_host}:{port}"
    while True:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as resp:
                if resp.status == 200:
                    print(f"NPR Engine ready: {base}/v1 (OpenAI API), {base}/npr/info", flush=True)
                    return
        except OSError:
            pass
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    try:
        args, sglang_argv = prepare(sys.argv[1:] if argv is None else argv)
    except LaunchError as exc:
        print(f"npr-server: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"NPR Engine: serving {sglang_argv[1]} on {args.host}:{args.port} "
          f"(profile {args.profile}, schema {args.tag_schema})", flush=True)
    return run_sglang(args, sglang_argv)


def run_sglang(args: argparse.Namespace, sglang_argv: list[str]) -> int:
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    from npr_engine.compat import UnsupportedServerArgs

    load_plugins()
    try:
        server_args = prepare_server_args(sglang_argv)
        server_args.resolve_once()
    except UnsupportedServerArgs as exc:
        print(f"npr-server: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    threading.Thread(target=_announce_when_ready, args=(args.host, args.port), daemon=True).start()
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
