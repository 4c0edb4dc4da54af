"""Tag schemas: the tag strings a parallel-reasoning model writes, as plain data.

A schema names the tags; the engine logic is the same for every schema (DESIGN.md
section 2). Presets: ``parallel`` (default), ``npr`` and ``multiverse``. A user adds a
schema with :func:`register_schema` or by passing the path of a JSON file with the
same fields to :func:`get_schema`; no engine code changes.

Exact whitespace of the branch header is part of the schema: it must match what the
model was trained on, so it is stored verbatim and only ``{i}`` is substituted.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_SCHEMA = "parallel"

_INDEX = "{i}"
_PLANS = "{plans}"
# A plan item's id (`1`, `1.2`) as NPR's and Multiverse's data write it: `1.2: text`.
PLAN_ID = r"\s*([0-9]+(?:\.[0-9]+)*)\s*:"
# Fields whose value is a tag the parser matches (None allowed for the optional ones).
_REQUIRED_TAGS = ("block_open", "fork_after", "branch_close", "join_header", "join_close")
_OPTIONAL_TAGS = ("plan_open", "plan_close", "block_close")


class UnknownSchemaError(ValueError):
    """Raised by :func:`get_schema` for a name that is neither registered nor a file."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown tag schema {name!r}; known schemas: {', '.join(known)}")
        self.name = name
        self.known = known


@dataclass(frozen=True)
class TagSchema:
    """The tags of one model family.

    ``summary_in_content`` picks the reasoning split (DESIGN.md section 6): True means
    only the paths are reasoning and each summary is content (``parallel``); False
    means whole blocks, join text included, are reasoning (``npr``, ``multiverse``).
    NOTE: it is a field rather than derived from the tags because ``parallel`` and
    ``multiverse`` have the same tag shape but split differently.

    Text the engine writes itself, verbatim as the family was trained (DESIGN.md
    section 2)::

      ... fork_after + fork_separator | header(id) text branch_close branch_tail | ... | join_header

    ``fork_separator`` is written after the fork point and shared by every path (its
    tokens share positions with the first path's header: training resets each path to
    pos(fork_after) + 1); ``branch_tail`` ends each path after its close tag (it is not
    counted in the path's length for the join position). ``{i}`` in ``branch_header``
    is the plan item's id (``plan_id``, group 1) or else the 1-based path index.
    ``forced_open`` / ``forced_plan`` are what option ``force`` writes (``{plans}``:
    one ``forced_plan`` per path); ``keep_tokens`` are further tag texts that must
    survive detokenization when they are special tokens; ``max_depth`` is the default
    nesting limit of the family (None: the option's default).
    """

    name: str
    block_open: str
    fork_after: str
    plan_open: str | None
    plan_close: str | None
    branch_header: str
    branch_close: str
    join_header: str
    join_close: str
    block_close: str | None
    summary_in_content: bool = False
    fork_separator: str = ""
    branch_tail: str = ""
    forced_open: str | None = None
    forced_plan: str | None = None
    plan_id: str = PLAN_ID
    keep_tokens: tuple[str, ...] = ()
    max_depth: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("tag schema needs a non-empty name")
        for field_name in (*_REQUIRED_TAGS, "branch_header"):
            _check_tag(self, field_name, getattr(self, field_name))
        for field_name in _OPTIONAL_TAGS:
            value = getattr(self, field_name)
            if value is not None:
                _check_tag(self, field_name, value)
        if _INDEX not in self.branch_header:
            raise ValueError(f"schema {self.name!r}: branch_header must contain {{i}}")
        if (self.plan_open is None) != (self.plan_close is None):
            raise ValueError(f"schema {self.name!r}: give both plan_open and plan_close, or neither")
        if self.plan_open is not None and self.fork_after == self.block_open:
            raise ValueError(
                f"schema {self.name!r}: plan items need a fork point after the block open"
            )
        self._check_format()
        self._check_distinct()

    def _check_format(self) -> None:
        for field_name in ("fork_separator", "branch_tail"):
            if not isinstance(getattr(self, field_name), str):
                raise ValueError(f"schema {self.name!r}: {field_name} must be a string")
        if self.forced_open is not None:
            _check_tag(self, "forced_open", self.forced_open)
            if self.plan_open is not None and (_PLANS not in self.forced_open or self.forced_plan is None):
                raise ValueError(f"schema {self.name!r}: forced_open needs {{plans}} and a forced_plan")
        if self.forced_plan is not None and _INDEX not in self.forced_plan:
            raise ValueError(f"schema {self.name!r}: forced_plan must contain {{i}}")
        try:
            if re.compile(self.plan_id).groups < 1:
                raise ValueError("it needs a group for the id")
        except (re.error, TypeError, ValueError) as exc:
            raise ValueError(f"schema {self.name!r}: plan_id is not a usable pattern: {exc}") from exc
        if not isinstance(self.keep_tokens, tuple) or not all(isinstance(t, str) and t for t in self.keep_tokens):
            raise ValueError(f"schema {self.name!r}: keep_tokens must be a list of non-empty strings")
        if self.max_depth is not None and (not isinstance(self.max_depth, int) or isinstance(self.max_depth, bool)
                                           or self.max_depth < 0):
            raise ValueError(f"schema {self.name!r}: max_depth must be an integer >= 0")

    def _check_distinct(self) -> None:
        # NOTE: fork_after may equal block_open (the `parallel` preset forks right at the
        # open tag); any other shared tag would make the parser's choice ambiguous.
        seen: dict[str, str] = {}
        for kind, tag in self.tags().items():
            if kind == "fork_after" and tag == self.block_open:
                continue
            if tag in seen:
                raise ValueError(
                    f"schema {self.name!r}: {kind} and {seen[tag]} are both {tag!r}"
                )
            seen[tag] = kind

    def header(self, i: int | str) -> str:
        """Branch header for path id ``i`` (1-based index or plan id), as injected."""
        # NOTE: replace, not str.format: a tag may legitimately contain braces.
        return self.branch_header.replace(_INDEX, str(i))

    def path_ids(self, plan_items: tuple[str, ...], width: int) -> list[str]:
        """Header ids of a block's ``width`` paths: each plan item's own id (``1.2``)
        where it has one, else the 1-based index."""
        pattern = re.compile(self.plan_id)
        ids = []
        for i in range(1, width + 1):
            found = pattern.match(plan_items[i - 1]) if i <= len(plan_items) else None
            ids.append(found.group(1) if found else str(i))
        return ids

    def forced_text(self, paths: int) -> str:
        """Text the engine writes to open a block itself (request option ``force``)."""
        if self.forced_open is not None:
            plans = "".join((self.forced_plan or "").replace(_INDEX, str(i)) for i in range(1, paths + 1))
            return self.forced_open.replace(_PLANS, plans)
        text = self.block_open
        if self.plan_open is not None:
            text += "".join(f"{self.plan_open}{i}:{self.plan_close}" for i in range(1, paths + 1))
        if self.fork_after != self.block_open:
            text += self.fork_after
        return text

    def special_texts(self) -> set[str]:
        """Every text of the schema that holds tags (what must survive detokenization):
        a special token found inside any of them is one of the schema's tags."""
        texts = (self.branch_header, self.forced_open, self.forced_plan, *self.keep_tokens)
        return {*self.tags().values(), *(t for t in texts if t)}

    @property
    def header_prefix(self) -> str:
        """The branch header text before the index."""
        return self.branch_header.split(_INDEX, 1)[0]

    @property
    def header_suffix(self) -> str:
        """The branch header text after the index."""
        return self.branch_header.split(_INDEX, 1)[1]

    def tags(self) -> dict[str, str]:
        """Matched tags by kind (optional tags the schema lacks are left out)."""
        names = ("block_open", "fork_after", "plan_open", "plan_close", "branch_close",
                 "join_header", "join_close", "block_close")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with every field; ``TagSchema(**d)`` rebuilds the schema."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TagSchema:
        """Build from a dict such as a parsed JSON file; unknown keys are an error."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"tag schema: unknown field(s) {', '.join(unknown)}")
        optional = {n: None for n in _OPTIONAL_TAGS}
        data = dict(data)
        if isinstance(data.get("keep_tokens"), list):
            data["keep_tokens"] = tuple(data["keep_tokens"])
        return cls(**{**optional, **data})


def _check_tag(schema: TagSchema, field_name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"schema {schema.name!r}: {field_name} must be a non-empty string")


PARALLEL = TagSchema(
    name="parallel",
    block_open="<parallel>",
    fork_after="<parallel>",
    plan_open=None,
    plan_close=None,
    branch_header="<path>{i}: ",
    branch_close="</path>",
    join_header="<summary>",
    join_close="</summary>",
    block_close="</parallel>",
    summary_in_content=True,
)

# NPR: `<guideline>\n<plan>1: ..</plan>\n..</guideline>\n<step>\n1: ..\n</step>\n..
# <takeaway>\n..\n</takeaway>\n\n`, blocks one after another, no nesting in training.
NPR = TagSchema(
    name="npr",
    block_open="<guideline>",
    fork_after="</guideline>",
    plan_open="<plan>",
    plan_close="</plan>",
    branch_header="<step>\n{i}:",
    branch_close="</step>",
    join_header="<takeaway>",
    join_close="</takeaway>",
    block_close=None,
    fork_separator="\n",
    branch_tail="\n",
    forced_open="<guideline>\n{plans}</guideline>",
    forced_plan="<plan>{i}:</plan>\n",
    max_depth=1,
)

# Multiverse (its data serializer): every tag on its own line, dotted ids, nesting.
MULTIVERSE = TagSchema(
    name="multiverse",
    block_open="<Parallel>",
    fork_after="</Goal>",
    plan_open="<Outline>",
    plan_close="</Outline>",
    branch_header="<Path>\n{i}:",
    branch_close="</Path>",
    join_header="<Conclusion>",
    join_close="</Conclusion>",
    block_close="</Parallel>",
    fork_separator="\n",
    branch_tail="\n",
    forced_open="<Parallel>\n<Goal>\n{plans}</Goal>",
    forced_plan="<Outline>\n{i}:\n</Outline>\n",
    keep_tokens=("<Think>", "</Think>", "<Goal>"),
)

_REGISTRY: dict[str, TagSchema] = {s.name: s for s in (PARALLEL, NPR, MULTIVERSE)}


class BySchema:
    """Values derived from a schema, kept by the schema's identity (hashing a schema
    hashes all its fields) and alongside it (an id is reused once its schema is gone).
    Bounded: a schema file is loaded anew by each request naming it."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._values: dict[tuple, tuple] = {}

    def get(self, schema: TagSchema, key: tuple, build):
        """The value for (schema, *key), made by build() the first time."""
        full = (id(schema), *key)
        known = self._values.get(full)
        if known is None or known[0] is not schema:
            if len(self._values) >= self._limit:
                self._values.clear()
            known = self._values[full] = (schema, build())
        return known[1]


def known_schemas() -> list[str]:
    """Names of the registered schemas, presets first in registration order."""
    return list(_REGISTRY)


def is_registered(name: Any) -> bool:
    """Whether `name` names a registered schema (not a file path)."""
    return isinstance(name, str) and name in _REGISTRY


def register_schema(schema: TagSchema, *, replace: bool = False) -> TagSchema:
    """Make ``schema`` available to :func:`get_schema` by its name.

    Registering an equal schema again is a no-op; a different schema under a taken
    name is an error unless ``replace`` is true (so a typo cannot silently shadow a
    preset).
    """
    current = _REGISTRY.get(schema.name)
    if current is not None and current != schema and not replace:
        raise ValueError(f"tag schema {schema.name!r} is already registered")
    _REGISTRY[schema.name] = schema
    return schema


def get_schema(name_or_path: str | Path | TagSchema | None = None) -> TagSchema:
    """A registered schema by name, or one loaded from a JSON file path.

    ``None`` gives the default (``parallel``); a :class:`TagSchema` is returned as is.
    A JSON file without a ``name`` field is named after the file stem.
    """
    if isinstance(name_or_path, TagSchema):
        return name_or_path
    key = DEFAULT_SCHEMA if name_or_path is None else str(name_or_path)
    if key in _REGISTRY:
        return _REGISTRY[key]
    path = Path(key)
    if path.is_file():
        return _load_json(path)
    raise UnknownSchemaError(key, known_schemas())


def _load_json(path: Path) -> TagSchema:
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        return TagSchema.from_dict({"name": path.stem, **_as_object(data)})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tag schema file {path}: {exc}") from exc


def _as_object(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data
