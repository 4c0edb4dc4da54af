"""Launch configuration of the decode kernels: tile knobs by query-tile height, and
split counts that fill exactly one wave of resident programs.

Why one wave: every program walks its split tile by tile, and each tile waits on a
dependent gather (slot ids, then K/V rows), so a program's time is ~tiles x latency.
The step time is the longest program's, so we want as many programs as can be
resident at once (no more: a second partial wave runs alone at the end) and every
program as short as that allows. Run 1 on the H200 (KERNELS_NOTES.md) is the evidence:
prefix splits 16 / 32 / 64 at W=8 16k gave 1.76 / 1.34 / 1.55 ms (64 = two waves).

`programs_per_sm` is the occupancy the compiler report gives for each tile (registers
and shared memory per program); benchmarks/kernels.py sweeps it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch

MAX_SPLITS = 64  # per segment kind; a row has at most 2 * MAX_SPLITS columns


@dataclass(frozen=True)
class TileConfig:
    block_n: int  # KV slots per tile
    num_warps: int
    num_stages: int
    programs_per_sm: int  # resident programs per SM at this tile (sizes the wave)
    prefetch: bool = False  # load the next tile's slot ids one iteration ahead

    def __post_init__(self) -> None:
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"block_n must be a power of two >= 16, got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8, 16) or self.num_stages < 1 or self.programs_per_sm < 1:
            raise ValueError(f"bad tile config {self}")


# Defaults by query-tile height M = members x padded q heads per kv head. Run 1 (H200,
# PREFETCH did not exist): M=16 2 warps 3.29 vs 4 warps 3.65 ms, stages 3 3.41 ms;
# M=32 stages 3 1.30 vs 1.34 ms, BLOCK_N 32 1.68; M=64 BLOCK_N 32 2.51 vs 2.96 ms.
# With PREFETCH the pipeliner double-buffers the K/V gathers at num_stages 3 (ptxas,
# sm_90a: shared memory 39 -> 72 KB at M=16, 45 -> 78 KB at M=32); programs_per_sm is
# the occupancy that leaves (KERNELS_NOTES.md, compiler report). Run 2 sweeps each knob.
_DEFAULTS = {
    16: TileConfig(block_n=64, num_warps=2, num_stages=3, programs_per_sm=3, prefetch=True),
    32: TileConfig(block_n=64, num_warps=2, num_stages=3, programs_per_sm=2, prefetch=True),  # run 2 sweep
    64: TileConfig(block_n=32, num_warps=4, num_stages=3, programs_per_sm=3, prefetch=True),
    128: TileConfig(block_n=32, num_warps=8, num_stages=2, programs_per_sm=1),
}


def tile_config(block_m: int, head_dim: int, **overrides: int | bool) -> TileConfig:
    """The default knobs for a query tile of `block_m` rows, with `overrides` applied
    (None values are ignored, so wrappers can pass their optional arguments through)."""
    base = _DEFAULTS[min(max(block_m, 16), 128)]
    if head_dim > 128:  # K/V tiles twice as wide: halve the slots per tile
        base = replace(base, block_n=max(16, base.block_n // 2))
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@functools.lru_cache(maxsize=16)
def sm_count(device: torch.device | str) -> int:
    """SMs of `device` (SGLang's attention backends keep their device as a string)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 8  # the interpreter: any small number exercises the split logic
    return torch.cuda.get_device_properties(device).multi_processor_count


def wave_slots(num_kv_heads: int, cfg: TileConfig, device: torch.device | str) -> int:
    """Programs per kv head that fit in one wave."""
    return max(1, cfg.programs_per_sm * sm_count(device) // max(1, num_kv_heads))


def per_seq_splits(batch: int, max_len: int | None, slots: int, block_n: int) -> int:
    """Splits per row: one wave of `slots` programs (per kv head) in all, but no split
    shorter than one tile. Without a length hint, as if every row were long."""
    want = max(1, slots // max(1, batch))
    if max_len is not None:
        want = min(want, math.ceil(max(1, max_len) / block_n))
    return max(1, min(want, MAX_SPLITS))


@functools.lru_cache(maxsize=256)
def shared_splits(num_groups: int, prefix_len: int, batch: int, suffix_len: int, slots: int,
                  block_n: int) -> tuple[int, int]:
    """(prefix splits, suffix splits) for one launch holding both kinds of program.

    Both kinds get the same split length (a whole number of tiles), the shortest for
    which G x P + B x S programs fit in one wave: the long prefix is cut finely, the
    short suffixes stay whole, and no program waits on a longer sibling of its kind.
    """
    most = max(1, math.ceil(max(prefix_len, suffix_len, 1) / block_n))
    tiles = most
    lo = 1
    while lo <= most:  # smallest tile count per split whose programs fit in `slots`
        mid = (lo + most) // 2
        span = mid * block_n
        if num_groups * math.ceil(prefix_len / span) + batch * math.ceil(suffix_len / span) <= slots:
            tiles, most = mid, mid - 1
        else:
            lo = mid + 1
    span = tiles * block_n
    prefix = max(1, min(math.ceil(prefix_len / span), MAX_SPLITS))
    suffix = max(1, min(math.ceil(suffix_len / span), MAX_SPLITS))
    return prefix, suffix


def graph_splits(batch: int, slots: int) -> tuple[int, int]:
    """(prefix splits, suffix splits) fixed for a captured batch size, lengths unknown:
    half a wave of `slots` programs (per kv head) for the group programs of its
    batch // 2 group slots, half for its rows. Untuned (no GPU run yet)."""
    groups = max(1, batch // 2)
    prefix = max(1, min(MAX_SPLITS, slots // (2 * groups)))
    suffix = max(1, min(MAX_SPLITS, slots // (2 * max(1, batch))))
    return prefix, suffix
