"""Zero-copy KV bookkeeping for fork and join (page size 1: one slot per token).

    parent row at fork:  | prefix (L slots, shared) |
    branch i row:        | prefix (aliased)         | u | header i | text i | close i |
    parent row at join:  | prefix | u h1 .. close1 | h2 .. close2 | ... | join header ..
                                    ^ branch 1's own slots, then each later branch's
                                      own slots minus its copy of u (freed)

u are the parent's tokens without KV at the fork: the sampled token that completed
the fork tag, or a whole forced block open written at once. Every branch computes
them at the same positions in its first step; only branch 1's copy is kept.
"""

from __future__ import annotations

import torch


def alias_prefix(req_to_token: torch.Tensor, parent_row: int, rows: list[int], prefix_len: int) -> None:
    """Branch rows start as the parent's first prefix_len slots (no KV copied)."""
    req_to_token[rows, :prefix_len] = req_to_token[parent_row, :prefix_len]


def join_rows(
    req_to_token: torch.Tensor,
    parent_row: int,
    prefix_len: int,
    branches: list[tuple[int, int]],
    uncommitted: int = 1,
) -> tuple[int, torch.Tensor]:
    """Concatenate branch-owned slots into the parent row after the prefix.

    branches: (row, kv_len) per branch in index order; each row owns [prefix_len, kv_len).
    Returns the parent's new KV length and the duplicate slots of u (uncommitted) to free.
    """
    pieces, duplicates = [], []
    for k, (row, kv_len) in enumerate(branches):
        own = req_to_token[row, prefix_len:kv_len]
        if k > 0:
            duplicates.append(own[:uncommitted])
            own = own[uncommitted:]
        pieces.append(own)
    joined = torch.cat(pieces)
    end = prefix_len + joined.numel()
    req_to_token[parent_row, prefix_len:end] = joined
    dup = torch.cat(duplicates) if duplicates else joined.new_empty(0)
    return end, dup
