"""Argument checks shared by the kernel wrappers (shapes, strides, dtypes, devices).

They read only tensor metadata, never tensor values, so they neither sync the host nor
break CUDA-graph capture.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_qkv(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, interpreting: bool
) -> tuple[int, int, int, int]:
    """Checks q [B, Hq, D] and k_cache / v_cache [num_slots, Hkv, D] (CPU tensors only
    when the kernels run under the Triton interpreter).

    Returns (B, Hq, Hkv, D).
    """
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D, got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} dtype must be float16/bfloat16/float32, got {t.dtype}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q is on {q.device}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in the head dim, strides {t.stride()}")
    batch, num_q_heads, head_dim = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} != v_cache {tuple(v_cache.shape)}")
    num_kv_heads = k_cache.shape[1]
    if k_cache.shape[2] != head_dim:
        raise ValueError(f"head dim of k_cache ({k_cache.shape[2]}) != q's ({head_dim})")
    if num_kv_heads == 0 or num_q_heads % num_kv_heads:
        raise ValueError(f"q heads ({num_q_heads}) not a multiple of kv heads ({num_kv_heads})")
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"head dim must be a power of two in [16, 256], got {head_dim}")
    if q.device.type != "cuda" and not interpreting:
        raise ValueError(
            f"tensors are on {q.device}: the Triton kernels need CUDA (or TRITON_INTERPRET=1);"
            " use npr_engine.kernels.reference on CPU"
        )
    return batch, num_q_heads, num_kv_heads, head_dim


def check_index(name: str, t: torch.Tensor, device: torch.device, length: int | None = None) -> None:
    """An int32 1-D index tensor on `device`, optionally of a given length."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if t.dim() != 1 or (length is not None and t.numel() != length):
        want = f"[{length}]" if length is not None else "1-D"
        raise ValueError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    if t.numel() > 1 and t.stride(0) != 1:
        raise ValueError(f"{name} must be contiguous")


def check_out(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    """The output tensor: `out` if given (same shape/dtype/device as q), else a new one."""
    if out is None:
        return torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(
            f"out must match q: got {tuple(out.shape)} {out.dtype} {out.device},"
            f" want {tuple(q.shape)} {q.dtype} {q.device}"
        )
    if out.stride(-1) != 1:
        raise ValueError("out must be contiguous in the head dim")
    return out


def check_positive(name: str, value: int, upper: int | None = None) -> None:
    if not isinstance(value, int) or value < 1 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be an int >= 1{bound}, got {value!r}")
