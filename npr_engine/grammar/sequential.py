"""Where the text of a block decoded sequentially stands (the parser's FORKED state).

A block falls back to sequential text (depth limit, budgets), or a flattened reply is
read back: then the forked block's paths, and any blocks those paths open, arrive as
plain text. One level per open block; ``levels[0]`` is the forked block itself::

  open     after a nested block's open tag, before its fork point
  between  between paths (right after the fork point, or after a path's close tag)
  path     inside a path (after a header, before its close tag)
  summary  inside a nested block's join text
  after    after a nested block's join close, before its close tag

Paths are found by the header's text before the index (``<path>``), so a join header
written inside a path is path text, exactly as the engine treats it in a real branch.
"""

from __future__ import annotations

import copy

from npr_engine.grammar.schemas import TagSchema


class SequentialBlocks:
    def __init__(self, schema: TagSchema, start: int) -> None:
        self.schema = schema
        self.start = start  # parser offset of the fork point
        self.levels: list[str] = ["between"]
        # Text arrived after the fork point: the block is decoded sequentially (a real
        # fork's parent is parked and fed nothing until its join).
        self.fed = False

    def clone(self) -> SequentialBlocks:
        other = copy.copy(self)
        other.levels = list(self.levels)
        return other

    def on_tag(self, kinds: frozenset[str]) -> bool:
        """Track one tag; True when it is the forked block's own join header."""
        top = self.levels[-1]
        if top == "path":
            if "branch_close" in kinds:
                self.levels[-1] = "between"
            elif "block_open" in kinds:
                self.levels.append("between" if "fork_after" in kinds else "open")
        elif top == "open":
            if "fork_after" in kinds:
                self.levels[-1] = "between"
        elif top == "between":
            if "branch_open" in kinds:
                self.levels[-1] = "path"
            elif "join_header" in kinds:
                if len(self.levels) == 1:
                    return True
                self.levels[-1] = "summary"
        elif top == "summary":
            if "join_close" in kinds:
                self._end_summary()
            elif "block_close" in kinds:
                self.levels.pop()
        elif "block_close" in kinds:  # after
            self.levels.pop()
        return False

    def _end_summary(self) -> None:
        if self.schema.block_close is None:
            self.levels.pop()
        else:
            self.levels[-1] = "after"

    def closing_text(self) -> str:
        """Tags that close every open level, innermost first ("" if no text arrived)."""
        if not self.fed:
            return ""
        s = self.schema
        join = s.join_header + s.join_close + (s.block_close or "")
        per_level = {
            "open": s.fork_after + join,
            "between": join,
            "path": s.branch_close + join,
            "summary": s.join_close + (s.block_close or ""),
            "after": s.block_close or "",
        }
        return "".join(per_level[level] for level in reversed(self.levels))
