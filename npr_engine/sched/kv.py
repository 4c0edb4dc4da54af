"""Zero-copy KV bookkeeping for fork and join (page size 1: one slot per token).

    parent row at fork:  | prefix (L slots, shared) |
    branch i row:        | prefix (aliased)         | u | header i | text i | close i |
    parent row at join:  | prefix | u h1 .. close1 | h2 .. close2 | ... | join header ..
                                    ^ branch 1's own slots, then each later branch's
                                      own slots minus its copy of u (freed)

u are the parent's tokens without KV at the fork: the sampled token that completed
the fork tag, or a whole forced block open written at once. Every branch computes
them at the same positions in its first step; only branch 1's copy is kept.

A step's forks (and a step's joins) move their slot ids in one indexed copy of the
row table, not one per block: each is a list of runs (row, start) -> (row, start), n
slots, gathered and scattered at once (on a GPU, a few kernels a step).
"""

from __future__ import annotations

import numpy as np
import torch

Run = tuple[int, int, int, int, int]  # source row, source start, target row, target start, slots


def alias_prefixes(req_to_token: torch.Tensor, forks: list[tuple[int, list[int], int]]) -> None:
    """Branch rows start as their parent's first L slots (no KV copied).
    forks: (parent row, branch rows, L) for each fork."""
    _copy(req_to_token, [(parent, 0, row, 0, n) for parent, rows, n in forks for row in rows])


def join_rows(
    req_to_token: torch.Tensor, joins: list[tuple[int, int, list[tuple[int, int]], int]]
) -> tuple[list[int], torch.Tensor]:
    """Concatenate branch-owned slots into each parent row after its prefix.

    joins: (parent row, L, branches, u) for each block; branches: (row, kv_len) in
    index order, each row owning [L, kv_len). Returns each parent's new KV length and
    the duplicate slots of u (every branch's copy but the first's), to free.
    """
    runs: list[Run] = []
    duplicates: list[Run] = []
    ends = []
    for parent, prefix_len, branches, uncommitted in joins:
        at = prefix_len
        for k, (row, kv_len) in enumerate(branches):
            start = prefix_len
            if k > 0:
                duplicates.append((row, prefix_len, 0, 0, min(uncommitted, kv_len - prefix_len)))
                start += uncommitted
            if kv_len > start:
                runs.append((row, start, parent, at, kv_len - start))
                at += kv_len - start
        ends.append(at)
    dup = _gather(req_to_token, duplicates)  # read before the rows are written
    _copy(req_to_token, runs)
    return ends, dup


def move_slots(req_to_token: torch.Tensor, runs: list[Run], dropped: list[Run]) -> torch.Tensor:
    """Copy the runs (a step's staged-join moves: branch row -> parent row) in one indexed
    copy; returns the slots of `dropped` (runs by source only), read before it, to free."""
    freed = _gather(req_to_token, dropped)
    _copy(req_to_token, runs)
    return freed


def _index(runs: list[Run]) -> torch.Tensor:
    """4 x slots: source row, source column, target row, target column of every slot
    the runs cover (built in numpy: its calls on small host arrays cost a fraction of
    torch's; the index moves to the table's device once)."""
    cols = np.array(runs, dtype=np.int64).T  # 5 x runs
    lens = cols[4]
    step_in_run = _steps(lens)
    each = np.repeat(cols[:4], lens, axis=1)
    each[1] += step_in_run
    each[3] += step_in_run
    return torch.from_numpy(each)


def _steps(lens: np.ndarray) -> np.ndarray:
    """0 .. n-1 for each run of n, concatenated."""
    return np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)


def write_extend_slots(req_to_token: torch.Tensor, rows: np.ndarray, starts: np.ndarray, lens: np.ndarray,
                       slots: torch.Tensor) -> None:
    """An extend batch over held rows: row i gets its next lens[i] slots of `slots` (in
    batch order) from column starts[i] on, in one indexed write. The prefix before it is
    in the row already, so nothing else is written."""
    lens = lens.astype(np.int64, copy=False)
    index = torch.from_numpy(np.stack((np.repeat(rows, lens), np.repeat(starts, lens) + _steps(lens))))
    index = index.to(req_to_token.device)
    req_to_token[index[0], index[1]] = slots.to(req_to_token.dtype)


def _gather(table: torch.Tensor, runs: list[Run]) -> torch.Tensor:
    runs = [r for r in runs if r[4] > 0]
    if not runs:
        return table.new_empty(0)
    index = _index(runs).to(table.device)
    return table[index[0], index[1]]


def _copy(table: torch.Tensor, runs: list[Run]) -> None:
    runs = [r for r in runs if r[4] > 0]
    if len(runs) == 1:  # one run: two slices
        src, s0, dst, d0, n = runs[0]
        table[dst, d0:d0 + n] = table[src, s0:s0 + n]
    elif runs:
        index = _index(runs).to(table.device)
        table[index[2], index[3]] = table[index[0], index[1]]
