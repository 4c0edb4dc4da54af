"""Triton decode attention over page-size-1 slot lists, with torch references.

decode_paged: per-sequence split-K decode (GQA folded into the query tile).
shared_prefix_decode: sibling branches read their shared prefix KV once.
GraphPlan: its plan in fixed device buffers, for CUDA-graph replay.
"""

from .decode_paged import decode_paged
from .graph_plan import GraphPlan
from .reference import decode_reference, join_slot_lists
from .shared_prefix import (
    SharedPrefixMeta,
    build_shared_prefix_meta,
    shared_prefix_decode,
    shared_prefix_reference,
)
from .tuning import TileConfig, tile_config

__all__ = [
    "GraphPlan",
    "SharedPrefixMeta",
    "TileConfig",
    "build_shared_prefix_meta",
    "decode_paged",
    "decode_reference",
    "join_slot_lists",
    "shared_prefix_decode",
    "shared_prefix_reference",
    "tile_config",
]
