"""What the plugin reports about itself (`/npr/info`, the scheduler handshake)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from npr_engine import __version__

_active_hooks: list[str] = []


def mark_active(hook_names: list[str]) -> None:
    _active_hooks[:] = hook_names


def sglang_version() -> str:
    try:
        return version("sglang")
    except PackageNotFoundError:
        return "not installed"


def known_schema_names() -> list[str]:
    from npr_engine.grammar.schemas import known_schemas

    return known_schemas()


def plugin_status() -> dict:
    return {
        "active": bool(_active_hooks),
        "npr_engine_version": __version__,
        "sglang_version": sglang_version(),
        "hooks": list(_active_hooks),
        "schemas": known_schema_names(),
    }
