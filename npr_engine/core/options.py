"""Per-request NPR options (DESIGN.md section 6): `custom_params["npr"]` / HTTP `parallel`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from npr_engine.grammar.schemas import TagSchema, UnknownSchemaError, get_schema

POSITION_POLICIES = ("shared",)  # "sequential" needs re-rotated keys: not offered yet
OPTIONS_KEY = "npr"


class InvalidNprOptions(ValueError):
    """A request's parallel options are invalid; `field` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"parallel.{field}: {message}")
        self.field = field


def _default_schema() -> str:
    return os.environ.get("NPR_TAG_SCHEMA", "parallel")


@dataclass(frozen=True)
class NprOptions:
    schema: str = ""
    enabled: bool = True
    force: bool = False
    paths: int = 2
    max_paths: int = 8
    max_depth: int = 2
    max_path_tokens: int | None = None
    positions: str = "shared"

    def __post_init__(self) -> None:
        if not self.schema:
            object.__setattr__(self, "schema", _default_schema())
        _check_type("schema", self.schema, str)
        for name in ("enabled", "force"):
            _check_type(name, getattr(self, name), bool)
        for name in ("paths", "max_paths", "max_depth"):
            _check_type(name, getattr(self, name), int)
        if self.max_paths < 1:
            raise InvalidNprOptions("max_paths", f"must be >= 1, got {self.max_paths}")
        if not 1 <= self.paths <= self.max_paths:
            raise InvalidNprOptions("paths", f"must be in 1..max_paths ({self.max_paths}), got {self.paths}")
        if self.max_depth < 0:
            raise InvalidNprOptions("max_depth", f"must be >= 0, got {self.max_depth}")
        if self.max_path_tokens is not None:
            _check_type("max_path_tokens", self.max_path_tokens, int)
            if self.max_path_tokens < 1:
                raise InvalidNprOptions("max_path_tokens", f"must be >= 1, got {self.max_path_tokens}")
        if self.positions not in POSITION_POLICIES:
            raise InvalidNprOptions(
                "positions", f"unknown policy {self.positions!r} (supported: {', '.join(POSITION_POLICIES)})"
            )
        try:
            get_schema(self.schema)
        except (UnknownSchemaError, ValueError, OSError) as exc:
            raise InvalidNprOptions("schema", str(exc)) from exc

    @property
    def tag_schema(self) -> TagSchema:
        return get_schema(self.schema)

    @classmethod
    def from_dict(cls, raw: Any) -> NprOptions:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise InvalidNprOptions("", f"must be an object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidNprOptions(unknown[0], f"unknown option (known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in raw.items() if v is not None or k == "max_path_tokens"})

    @classmethod
    def from_custom_params(cls, custom_params: Any) -> NprOptions:
        raw = custom_params.get(OPTIONS_KEY) if isinstance(custom_params, dict) else None
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_type(name: str, value: Any, kind: type) -> None:
    # bool is an int subclass: reject True where a count is expected.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidNprOptions(name, f"must be {kind.__name__}, got {type(value).__name__}")
