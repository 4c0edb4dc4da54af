"""Per-request NPR options (DESIGN.md section 6): `custom_params["npr"]` / HTTP `parallel`."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

from npr_engine.grammar.schemas import TagSchema, UnknownSchemaError, get_schema, is_registered

POSITION_POLICIES = ("shared",)  # "sequential" needs re-rotated keys: not offered yet
OPTIONS_KEY = "npr"
# NOTE: SGLang 0.5.23 decodes custom_params in the scheduler (msgpack IPC) as JSON scalars,
# lists or flat objects only: `npr.branch_sampling`, an object in an object, would fail
# there, so from the tokenizer on it travels as this top-level key (wire_custom_params).
WIRE_SAMPLING_KEY = "npr_branch_sampling"


class InvalidNprOptions(ValueError):
    """A request's parallel options are invalid; `field` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"parallel.{field}: {message}")
        self.field = field


def _default_schema() -> str:
    return os.environ.get("NPR_TAG_SCHEMA", "parallel")


@functools.lru_cache(maxsize=8)
def _defaults(cls, schema: str):
    """The options of a request that gives none (most requests): built once per default
    schema (frozen, so shared), not once per request."""
    return cls()


# The ranges of SGLang 0.5.23's SamplingParams.verify, in the request's own terms.
_SAMPLING_CHECKS = {
    "temperature": (lambda v: 0 <= v < math.inf, "a finite number >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: v == -1 or v >= 1, "-1 (whole vocabulary) or >= 1"),
    "min_p": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repetition_penalty": (lambda v: 0 < v <= 2, "in (0, 2] (1 = none)"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
}


@dataclass(frozen=True)
class BranchSampling:
    """`parallel.branch_sampling`: sampling overrides for branch sequences only.

    Unset keys keep the request's values. Each branch samples with its own copy of the
    request's SamplingParams (ForkJoin._make_branch), so the parent, and the text after
    the join, keep the request's values."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def __post_init__(self) -> None:
        for name, (ok, expected) in _SAMPLING_CHECKS.items():
            value = getattr(self, name)
            if value is None:
                continue
            field = f"branch_sampling.{name}"
            if name == "top_k":
                _check_type(field, value, int)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidNprOptions(field, f"must be a number, got {type(value).__name__}")
            if not ok(value):
                raise InvalidNprOptions(field, f"must be {expected}, got {value}")
            if name != "top_k":
                object.__setattr__(self, name, float(value))

    @classmethod
    def from_dict(cls, raw: Any) -> BranchSampling:
        if not isinstance(raw, dict):
            raise InvalidNprOptions("branch_sampling", f"must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(_SAMPLING_CHECKS))
        if unknown:
            raise InvalidNprOptions(f"branch_sampling.{unknown[0]}",
                                    f"unknown option (known: {', '.join(sorted(_SAMPLING_CHECKS))})")
        return cls(**raw)

    def apply(self, params) -> None:
        """Set the overrides on a branch's SamplingParams, normalized the way SGLang's
        SamplingParams.__post_init__ normalizes a request's (temperature 0 is greedy,
        i.e. top_k 1; top_k -1 is the whole vocabulary)."""
        # NOTE: imported here: options are parsed in processes that never load SGLang's
        # sampling code (it pulls in torch); branches are made only in the scheduler.
        from sglang.srt.sampling.sampling_params import _SAMPLING_EPS, TOP_K_ALL

        for name in ("top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            if getattr(self, name) is not None:
                setattr(params, name, getattr(self, name))
        if self.top_k is not None:
            params.top_k = TOP_K_ALL if self.top_k == -1 else min(self.top_k, TOP_K_ALL)
        if self.temperature is None:
            return
        if self.temperature < _SAMPLING_EPS:
            params.temperature, params.top_k = 1.0, 1
            return
        params.temperature = self.temperature
        if self.top_k is None and params.top_k == 1:
            # A greedy request (temperature 0) reaches us as top_k 1: sampling branches
            # must lift it, or a branch temperature would change nothing.
            params.top_k = TOP_K_ALL


@dataclass(frozen=True)
class NprOptions:
    schema: str = ""
    enabled: bool = True
    force: bool = False
    paths: int = 2
    max_paths: int = 8
    max_depth: int | None = None  # None: the schema's own (`npr` 1: not trained), else 2
    max_path_tokens: int | None = None
    positions: str = "shared"
    branch_sampling: BranchSampling | None = None

    def __post_init__(self) -> None:
        if not self.schema:
            object.__setattr__(self, "schema", _default_schema())
        _check_type("schema", self.schema, str)
        for name in ("enabled", "force"):
            _check_type(name, getattr(self, name), bool)
        if self.max_depth is None:
            object.__setattr__(self, "max_depth", _schema_max_depth(self.schema))
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
        if self.branch_sampling is not None and not isinstance(self.branch_sampling, BranchSampling):
            object.__setattr__(self, "branch_sampling", BranchSampling.from_dict(self.branch_sampling))

    @property
    def tag_schema(self) -> TagSchema:
        return get_schema(self.schema)

    @classmethod
    def from_dict(cls, raw: Any) -> NprOptions:
        if raw is None:
            return _defaults(cls, _default_schema())
        if not isinstance(raw, dict):
            raise InvalidNprOptions("", f"must be an object, got {type(raw).__name__}")
        schema = raw.get("schema")
        if schema is not None and not is_registered(schema):
            return cls._checked(raw)  # a schema file: checked (read) with every request
        try:  # typed: `True` and `1.0` equal `1`, but only one of them is valid
            key = frozenset((k, type(v), v) for k, v in raw.items())
        except TypeError:  # a value that is no scalar (branch_sampling): built anew
            return cls._checked(raw)
        return _from_items(cls, key, _default_schema())

    @classmethod
    def _checked(cls, raw: dict) -> NprOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidNprOptions(unknown[0], f"unknown option (known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in raw.items() if v is not None or k == "max_path_tokens"})

    @classmethod
    def from_custom_params(cls, custom_params: Any) -> NprOptions:
        """Options from custom_params as the request gave them, or in their wire form."""
        if not isinstance(custom_params, dict):
            return _defaults(cls, _default_schema())
        raw, moved = custom_params.get(OPTIONS_KEY), custom_params.get(WIRE_SAMPLING_KEY)
        if isinstance(raw, dict) and moved is not None:
            raw = {**raw, "branch_sampling": moved}
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        return asdict(self)


def wire_custom_params(custom_params: Any) -> Any:
    """custom_params as SGLang's IPC can carry them (see WIRE_SAMPLING_KEY); a new dict,
    as a caller may reuse its own for other requests."""
    raw = custom_params.get(OPTIONS_KEY) if isinstance(custom_params, dict) else None
    if not isinstance(raw, dict) or not isinstance(raw.get("branch_sampling"), dict):
        return custom_params
    npr = dict(raw)
    sampling = npr.pop("branch_sampling")
    return {**custom_params, OPTIONS_KEY: npr, WIRE_SAMPLING_KEY: sampling}


def _schema_max_depth(name: str) -> int:
    try:
        depth = get_schema(name).max_depth
    except (UnknownSchemaError, ValueError, OSError):
        depth = None  # reported below, as the schema field's own error
    return 2 if depth is None else depth


@functools.lru_cache(maxsize=256)
def _from_items(cls, items: frozenset, default_schema: str) -> NprOptions:
    """Options given as scalars, built once per distinct set and default schema (frozen,
    so shared): a rollout batch sends the same options with every request. A bad set
    raises each time."""
    return cls._checked({k: v for k, _, v in items})


def _check_type(name: str, value: Any, kind: type) -> None:
    # bool is an int subclass: reject True where a count is expected.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidNprOptions(name, f"must be {kind.__name__}, got {type(value).__name__}")
