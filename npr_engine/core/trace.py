"""The per-request trace (DESIGN.md section 6): blocks, paths, critical path, parallel rate."""

from __future__ import annotations

from dataclasses import dataclass, field

# Key of the trace in meta_info and in the scheduler's customized output info.
TRACE_KEY = "npr_trace"

FINISH_REASONS = ("close", "budget", "eos", "stop", "length", "abort")


@dataclass
class PathTrace:
    index: int  # 1-based
    tokens: int = 0  # header + generated + close tag (+ nested blocks' tokens)
    finish: str | None = None
    tail: int = 0  # tokens written after the close tag (schema `branch_tail`)
    children: list[BlockTrace] = field(default_factory=list)  # blocks nested in this path
    # Offsets (in this path's own tokens, nested blocks included) of tokens the engine wrote.
    injected: list[int] = field(default_factory=list)

    @property
    def critical_tokens(self) -> int:
        return self.tokens - sum(child.savings for child in self.children)

    def to_dict(self) -> dict:
        return {"index": self.index, "tokens": self.tokens, "finish": self.finish, "injected": self.injected,
                "tail": self.tail}


@dataclass
class BlockTrace:
    id: int
    parent_block: int | None
    parent_path: int | None
    depth: int
    fork_offset: int  # completion tokens before the fork
    width: int
    fallback: str | None = None
    # Tokens the engine wrote right after the fork point, before the fork (schema
    # `fork_separator`); they end the shared prefix and share the paths' first positions.
    separator: int = 0
    staged: bool = False  # joined path by path, each tail after the paths before it
    paths: list[PathTrace] = field(default_factory=list)
    join_tokens: int = 0
    # Parallel-rate counters: branch tokens decoded, and those decoded beside a sibling.
    decoded: int = 0
    decoded_with_sibling: int = 0

    @property
    def savings(self) -> int:
        """Tokens the block costs in total minus what it costs on the critical path."""
        if not self.paths:
            return 0
        return sum(p.tokens for p in self.paths) - max(p.critical_tokens for p in self.paths)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "parent_block": self.parent_block,
            "parent_path": self.parent_path,
            "depth": self.depth,
            "fork_offset": self.fork_offset,
            "width": self.width,
            "fallback": self.fallback,
            "separator": self.separator,
            "staged": self.staged,
            "paths": [p.to_dict() for p in self.paths],
            "join_tokens": self.join_tokens,
        }


@dataclass
class RequestTrace:
    schema: str
    blocks: list[BlockTrace] = field(default_factory=list)  # in fork order, all depths
    total_tokens: int = 0
    # Offsets (in the root's completion tokens, joined branches included) of tokens the
    # engine wrote outside any path: forced block open, join headers.
    injected: list[int] = field(default_factory=list)
    retractions: int = 0  # times the unit was retracted whole and rebuilt (sched/rebuild.py)

    def new_block(self, **kwargs) -> BlockTrace:
        block = BlockTrace(id=len(self.blocks), **kwargs)
        self.blocks.append(block)
        return block

    @property
    def critical_path_tokens(self) -> int:
        top = [b for b in self.blocks if b.parent_block is None]
        return self.total_tokens - sum(b.savings for b in top)

    @property
    def parallel_rate(self) -> float | None:
        decoded = sum(b.decoded for b in self.blocks)
        if not decoded:
            return None
        return sum(b.decoded_with_sibling for b in self.blocks) / decoded

    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "blocks": [b.to_dict() for b in self.blocks],
            "critical_path_tokens": self.critical_path_tokens,
            "total_tokens": self.total_tokens,
            "parallel_rate": self.parallel_rate,
            "injected": self.injected,
            "retractions": self.retractions,
        }
