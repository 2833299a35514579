"""Shared test helpers: devices, random inputs, and flash-attention's 2x error rule."""
import pytest
import torch

from sparse_attn import reference as ref

CUDA_OK = torch.cuda.is_available()

# Every parametrized case runs on each available device; CUDA cases carry the `cuda`
# marker and skip cleanly on machines without a GPU.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA_OK, reason="no CUDA device")]),
]

# Absolute slack added to the 2x rule: covers fp32 rounding differences between two
# correct fp32 implementations (both ~1e-7 from float64) without hiding real errors.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def skip_if_no_engine(device):
    if device == "cuda":
        pytest.skip("CPU-engine test: the CUDA engine's cases are in tests/test_cuda_*.py")


def skip_unless_prefill_kernel(device, dtype, head_dim):
    """CPU: every case runs. CUDA: the cases the CUDA prefill kernel has (bfloat16/float16,
    head_dim 64/128, the CUDA engine compiled); others skip (they raise ValueError there)."""
    if device != "cuda":
        return
    from sparse_attn import _C

    if not _C.cuda_compiled:
        pytest.skip("the CUDA engine is not compiled in")
    if dtype not in (torch.bfloat16, torch.float16) or head_dim not in (64, 128):
        pytest.skip(f"the CUDA prefill kernel has no {dtype} / head_dim {head_dim} instance")


def randn(shape, dtype, device="cpu", gen=None):
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def qkv(B, Sq, Sk, Hq, Hkv, D, dtype, device="cpu", seed=0, layout="bshd"):
    """Random q [B,Sq,Hq,D], k/v [B,Sk,Hkv,D]; layout "bhsd" returns transposed views of
    [B,H,S,D] tensors (the Hugging Face layout, strided, last dim contiguous)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "bhsd":
        q = randn((B, Hq, Sq, D), dtype, device, g).transpose(1, 2)
        k = randn((B, Hkv, Sk, D), dtype, device, g).transpose(1, 2)
        v = randn((B, Hkv, Sk, D), dtype, device, g).transpose(1, 2)
        return q, k, v
    return (randn((B, Sq, Hq, D), dtype, device, g), randn((B, Sk, Hkv, D), dtype, device, g),
            randn((B, Sk, Hkv, D), dtype, device, g))


def same_precision_attention(q, k, v, mask, scale=None):
    """Plain PyTorch attention computed in the inputs' own dtype (the error yardstick)."""
    B, Sq, Hq, D = q.shape
    g = Hq // k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(g, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(g, dim=1)
    s = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with nothing visible
    return torch.matmul(p, vh).transpose(1, 2)


def same_precision_decode(q, cache, pages=None, counts=None, scale=None):
    """Plain PyTorch decode in the inputs' dtype over the gathered cache (the 2x yardstick)."""
    B, Hq, D = q.shape
    Hkv, ps = cache.k_pages.shape[2], cache.page_size
    scale = D ** -0.5 if scale is None else scale
    outs = []
    for b in range(B):
        k, v = ref.gather_kv(cache.k_pages, cache.v_pages, cache.page_table, cache.seqlens, b)
        L = k.shape[0]
        mask = torch.ones(Hkv, L, dtype=torch.bool)
        if pages is not None:
            lp = torch.arange(L) // ps
            for g in range(Hkv):
                mask[g] = (lp[:, None] == pages[b, g, : int(counts[b, g])].long()[None]).any(-1)
        kh = k.transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
        vh = v.transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
        s = (kh @ q[b][:, :, None])[..., 0] * scale
        s = s.masked_fill(~mask.repeat_interleave(Hq // Hkv, 0), float("-inf"))
        p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
        outs.append((p[:, None, :] @ vh)[:, 0])
    return torch.stack(outs)


def assert_close_2x(out, out_ref, out_pt, dtype, what=""):
    """flash-attention's rule: |out - ref| <= 2 |out_pt - ref| + atol (max over elements)."""
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    err = (out.double() - out_ref).abs().max().item()
    err_pt = (out_pt.double() - out_ref).abs().max().item()
    assert err <= 2 * err_pt + ATOL[dtype], f"{what}: error {err:.3g} > 2 x {err_pt:.3g} + {ATOL[dtype]:g}"


def assert_lse_close(lse, lse_ref, what=""):
    lse_ref = lse_ref.to(lse.device)
    assert lse.dtype == torch.float32
    inf = torch.isinf(lse_ref)
    assert torch.equal(torch.isinf(lse), inf), f"{what}: -inf rows differ"
    assert (lse[inf] < 0).all() if inf.any() else True
    err = (lse.double() - lse_ref)[~inf].abs().max().item() if (~inf).any() else 0.0
    assert err < 1e-4, f"{what}: lse error {err:.3g}"


def poisoned_like(q):
    return torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)


__all__ = ["ref"]
