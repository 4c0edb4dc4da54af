"""Our view of SGLang's HookRegistry: declare hooks as data, apply them, prove they took.

SGLang's plugin loader and `HookRegistry.apply_hooks` catch and only log exceptions, so
a hook whose target moved in a new SGLang release would leave a silently unpatched
server. Every hook module in `patches/` declares `Hook` objects naming the upstream
target and the SGLang version it was written against; `install` registers them,
applies them and then checks that each target now resolves to a wrapper around the
original. Anything else is a `HookInstallError`, and the plugin stops the process.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

PINNED_SGLANG = "0.5.23"


class Kind(Enum):
    BEFORE = "before"
    AFTER = "after"
    AROUND = "around"
    REPLACE = "replace"


class HookInstallError(RuntimeError):
    """A hook target is missing or was not patched."""


@dataclass(frozen=True)
class Hook:
    target: str  # dotted path of the upstream function, e.g. "sglang.srt.x.Class.method"
    kind: Kind
    fn: Callable
    pinned: str = PINNED_SGLANG

    @property
    def name(self) -> str:
        return f"{self.kind.value}:{self.target}"


def resolve(target: str) -> object:
    """Return the object a dotted target names, or raise HookInstallError."""
    owner_path, _, attr = target.rpartition(".")
    try:
        owner = pkgutil.resolve_name(owner_path)
        return getattr(owner, attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise HookInstallError(
            f"hook target {target} not found in the installed SGLang "
            f"(hooks are written for SGLang {PINNED_SGLANG}): {exc}"
        ) from exc


def _unwrap_chain(obj: object) -> list[object]:
    chain = [obj]
    seen = {id(obj)}
    while (inner := getattr(chain[-1], "__wrapped__", None)) is not None and id(inner) not in seen:
        chain.append(inner)
        seen.add(id(inner))
    return chain


def install(hooks: list[Hook]) -> None:
    """Register, apply and verify `hooks`; raise HookInstallError if any did not take."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    originals = {h.target: resolve(h.target) for h in hooks}
    for hook in hooks:
        HookRegistry.register(hook.target, hook.fn, HookType[hook.kind.name])
    HookRegistry.apply_hooks()
    failed = [t for t in originals if not is_patched(t, originals[t])]
    if failed:
        raise HookInstallError("hooks did not apply to: " + ", ".join(sorted(failed)))



def is_patched(target: str, original: object) -> bool:
    current = resolve(target)
    current = getattr(current, "__func__", current)
    original = getattr(original, "__func__", original)
    if current is original:
        return False
    return original in _unwrap_chain(current)
