"""Environment settings, read in one place (prefix `NPR_`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npr_engine"


@dataclass(frozen=True)
class EnvConfig:
    cache_dir: Path
    tag_schema: str
    # How injected text of several tokens is fed: "extend" (one forward step for all of
    # them, npr_engine/sched/extend.py) or "step" (one token per decode step).
    inject: str = "extend"

    def __post_init__(self):
        if self.inject not in ("extend", "step"):
            raise ValueError(f"NPR_INJECT must be 'extend' or 'step', not {self.inject!r}")

    @classmethod
    def from_env(cls) -> EnvConfig:
        cache = os.environ.get("NPR_CACHE_DIR")
        return cls(
            cache_dir=Path(cache) if cache else _default_cache_dir(),
            tag_schema=os.environ.get("NPR_TAG_SCHEMA", "parallel"),
            inject=os.environ.get("NPR_INJECT", "extend"),
        )


def env() -> EnvConfig:
    return EnvConfig.from_env()
