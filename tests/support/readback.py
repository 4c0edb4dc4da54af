"""Check that a returned flattened text parses back into the request's trace.

The text is cut into segments (npr_engine.grammar.segment) and read as a tree of
blocks in document order; the trace's blocks form the same tree through
(parent_block, parent_path), ordered by fork offset. Each forked block must match a
text block with as many branches as its width, recursively. A fallback block is a
text block too, but what it contains was decoded sequentially and never forked, so
only its presence is checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npr_engine.grammar import Segment, TagSchema, get_schema, segment


@dataclass
class TextBlock:
    branches: list[list[TextBlock]] = field(default_factory=list)  # nested blocks per branch


def text_blocks(segs: tuple[Segment, ...] | list[Segment], schema: TagSchema) -> list[TextBlock]:
    """Blocks of one sequence of segments that reached their fork point, in document order."""
    blocks: list[TextBlock] = []
    for seg in segs:
        if seg.kind == "block_open_to_fork" and _reached_fork(seg, schema):
            blocks.append(TextBlock())
        elif seg.kind == "branch":
            blocks[-1].branches.append(text_blocks(seg.children, schema))
    return blocks


def _reached_fork(seg: Segment, schema: TagSchema) -> bool:
    # A block cut before its fork point (plan items, then EOS) never forked.
    return schema.fork_after == schema.block_open or schema.fork_after in seg.text[len(schema.block_open):]


def trace_children(trace: dict, block_id: int | None, path: int | None) -> list[dict]:
    found = [b for b in trace["blocks"] if b["parent_block"] == block_id and b["parent_path"] == path]
    return sorted(found, key=lambda b: b["fork_offset"])


def assert_text_matches_trace(text: str, trace: dict) -> None:
    schema = get_schema(trace["schema"])
    _match(text_blocks(segment(text, schema), schema), trace, None, None, text)


def _match(blocks: list[TextBlock], trace: dict, block_id: int | None, path: int | None, text: str) -> None:
    expected = trace_children(trace, block_id, path)
    assert len(blocks) == len(expected), (
        f"{len(blocks)} text block(s) but {len(expected)} traced under block {block_id} path {path}: {text!r}"
    )
    for blk, traced in zip(blocks, expected, strict=True):
        if traced["fallback"] is not None:
            continue
        assert len(blk.branches) == traced["width"] == len(traced["paths"]), (traced, text)
        for index, nested in enumerate(blk.branches, start=1):
            _match(nested, trace, traced["id"], index, text)
