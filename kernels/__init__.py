"""Triton decode attention over page-size-1 slot lists, with torch references.

decode_paged: per-sequence split-K decode (GQA folded into the query tile).
shared_prefix_decode: sibling branches read their shared prefix KV once.
"""

from .decode_paged import decode_paged, default_splits
from .reference import decode_reference, join_slot_lists
from .shared_prefix import (
    SharedPrefixMeta,
    build_shared_prefix_meta,
    shared_prefix_decode,
    shared_prefix_reference,
)

__all__ = [
    "SharedPrefixMeta",
    "build_shared_prefix_meta",
    "decode_paged",
    "decode_reference",
    "default_splits",
    "join_slot_lists",
    "shared_prefix_decode",
    "shared_prefix_reference",
]
