"""Pure-torch stand-in for sgl_kernel (sglang-kernel) -- dense Llama/Qwen3 on CUDA only."""
import torch
import torch.nn.functional as F

__version__ = "0.4.10+standin"


def _rms(x, w, eps, gemma=False):
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * ((1.0 + w.float()) if gemma else w.float())).to(x.dtype)


def rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    r = _rms(input, weight, eps)
    return out.copy_(r) if out is not None else r


def fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    residual.add_(input)
    input.copy_(_rms(residual, weight, eps))


def gemma_rmsnorm(input, weight, eps=1e-6, out=None, enable_pdl=None):
    r = _rms(input, weight, eps, gemma=True)
    return out.copy_(r) if out is not None else r


def gemma_fused_add_rmsnorm(input, residual, weight, eps=1e-6, enable_pdl=None):
    residual.add_(input)
    input.copy_(_rms(residual, weight, eps, gemma=True))


def _act_and_mul(act, x, out):
    d = x.shape[-1] // 2
    r = act(x[..., :d]) * x[..., d:]
    return out.copy_(r) if out is not None else r


def silu_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul(F.silu, input, out)


def gelu_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul(F.gelu, input, out)


def gelu_tanh_and_mul(input, out=None, enable_pdl=None):
    return _act_and_mul(lambda t: F.gelu(t, approximate="tanh"), input, out)


def _unsupported(name):
    def f(*a, **k):
        raise NotImplementedError(f"sgl_kernel stand-in: {name} not provided")
    f.__name__ = name
    return f


# imported at module level on CUDA, never called for dense bf16 Llama/Qwen3
for _n in ("int8_scaled_mm", "moe_sum", "moe_sum_reduce",
           "top_k_renorm_prob", "top_p_renorm_prob"):
    globals()[_n] = _unsupported(_n)
del _n


# NPR Engine's addition (issue: CUDA graphs on the GPU route). SGLang's breakable CUDA
# graph keeps captured intermediates through sgl_kernel.weak_ref_tensor (a view that
# does not own its memory). Pure torch cannot make a non-owning tensor, so the stand-in
# returns the tensor itself: the same values at the same address, only kept alive
# longer (more graph-pool memory, harmless on a check machine). NOT RUN ON A GPU YET:
# whatever capture needs next shows up there as a NotImplementedError or ImportError.
def weak_ref_tensor(tensor):
    return tensor
