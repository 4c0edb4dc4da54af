"""Plain-torch stand-in for the few `sgl_kernel` names SGLang's CPU engine imports.

sgl_kernel has no CPU build on PyPI; `./install.sh cpu` installs this package in its
place (never on GPU installs). Only names SGLang's CPU path needs at run time are
defined. Any other name raises ImportError on `from sgl_kernel import NAME` (module
attribute lookup fails), which SGLang relies on to pick its fallbacks.
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+npr.cpu.standin"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Write each request's new slots into its req_to_token row, in batch order."""
    del pool_len
    pos = 0
    rows = req_pool_indices.tolist()
    starts, ends = start_offset.tolist(), end_offset.tolist()
    for row, start, end in zip(rows, starts, ends):
        n = end - start
        req_to_token[row, start:end] = out_cache_loc[pos : pos + n].to(req_to_token.dtype)
        pos += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """Copy KV rows src_loc -> tgt_loc in every layer buffer (raw pointers, byte strides)."""
    pairs = list(zip(src_loc.tolist(), tgt_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        for src, tgt in pairs:
            ctypes.memmove(base + tgt * stride, base + src * stride, stride)


def _speculative_only(name: str):
    """SGLang imports these at module load; they run only with speculative decoding."""

    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not available on the CPU stand-in: "
            "speculative decoding is unsupported on the CPU profile"
        )

    unavailable.__name__ = name
    return unavailable


build_tree_kernel_efficient_cpu = _speculative_only("build_tree_kernel_efficient_cpu")
assign_draft_cache_locs_contiguous_cpu = _speculative_only("assign_draft_cache_locs_contiguous_cpu")
assign_extend_cache_locs_cpu = _speculative_only("assign_extend_cache_locs_cpu")
fill_accept_out_cache_loc_cpu = _speculative_only("fill_accept_out_cache_loc_cpu")
fill_bonus_tokens_cpu = _speculative_only("fill_bonus_tokens_cpu")
rotate_input_ids_cpu = _speculative_only("rotate_input_ids_cpu")
verify_tree_greedy_cpu = _speculative_only("verify_tree_greedy_cpu")
