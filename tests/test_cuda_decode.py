"""The CUDA paged decode engine (csrc/cuda/decode): persistent stream-K decode with in-kernel
fix-up and its separate-merge fallback, against the float64 reference (2x rule) and the CPU
engine; every worker count, repeated launches of one plan (no stale flags). Skipped without a
CUDA device. The cache is filled on the CPU and copied (the append kernel is not on CUDA yet)."""
import copy

import pytest
import torch

from sparse_attn import _C
from sparse_attn import reference as ref
from sparse_attn.paged import (PagedKVCache, cuda_max_workers, paged_decode_attention, plan_decode, quest_scores,
                               select_pages)

from conftest import CUDA_OK, assert_close_2x, assert_lse_close, same_precision_decode

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (CUDA_OK and getattr(_C, "cuda_compiled", False)),
                       reason="no CUDA device (or the CUDA engine not built)"),
]

DTYPES = [torch.bfloat16, torch.float16]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def cpu_cache(lens, Hkv, D, dtype, ps, seed):
    B, g = len(lens), gen(seed)
    per_seq = -(-max(max(lens), 1) // ps) + 1
    cache = PagedKVCache(B * per_seq + 3, ps, Hkv, D, batch_size=B, max_pages_per_seq=per_seq, dtype=dtype)
    S = max(max(lens), 1)
    k = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    v = torch.randn(B, S, Hkv, D, generator=g).to(dtype)
    cache.prefill(k, v, torch.tensor(lens))
    return cache


def to_cuda(cache):
    """The same cache state on the GPU (PagedKVCache(device='cuda'), tensors copied)."""
    num_pages, ps, Hkv, D = cache.k_pages.shape
    c = PagedKVCache(num_pages, ps, Hkv, D, batch_size=cache.batch_size, max_pages_per_seq=cache.page_table.shape[1],
                     dtype=cache.k_pages.dtype, device="cuda")
    for name in ("k_pages", "v_pages", "k_max", "k_min", "page_table", "seqlens"):
        getattr(c, name).copy_(getattr(cache, name))
    c._owned, c._free = copy.deepcopy(cache._owned), copy.deepcopy(cache._free)
    return c


def case(lens, Hq, Hkv, D, dtype, ps, select, seed=0):
    cc = cpu_cache(lens, Hkv, D, dtype, ps, seed)
    q = torch.randn(len(lens), Hq, D, generator=gen(seed + 1)).to(dtype)
    pages = counts = None
    if select:
        pages, counts = select_pages(quest_scores(q, cc), cc, token_budget=4 * ps + 7)
    return cc, to_cuda(cc), q, pages, counts


def check(out, lse, cc, q, pages, counts, dtype, what):
    torch.cuda.synchronize()
    out, lse = out.cpu(), lse.cpu()
    want, want_lse = ref.paged_decode_attention(q, cc.k_pages, cc.v_pages, cc.page_table, cc.seqlens, pages=pages,
                                                counts=counts, scale=0.3, return_lse=True)
    assert_close_2x(out, want, same_precision_decode(q, cc, pages, counts, scale=0.3), dtype, what)
    assert_lse_close(lse, want_lse, what)
    cpu_out, cpu_lse = paged_decode_attention(q, cc, pages=pages, counts=counts, scale=0.3, return_lse=True)
    torch.testing.assert_close(out.float(), cpu_out.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lse, cpu_lse, rtol=1e-3, atol=1e-3)


LENS = [17, 1, 482, 1110, 0, 64 * 9]  # a one-token page, a one-token sequence, an empty one, whole pages


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,D", [(8, 2, 64), (4, 4, 128), (16, 1, 128), (6, 2, 64), (12, 1, 64)])
@pytest.mark.parametrize("ps", [16, 64])
@pytest.mark.parametrize("select", [False, True])
def test_decode_matches_reference_and_cpu(dtype, Hq, Hkv, D, ps, select):
    cc, gc, q, pages, counts = case(LENS, Hq, Hkv, D, dtype, ps, select, seed=D + Hq + ps)
    qd = q.cuda()
    pd, cd = (None, None) if pages is None else (pages.cuda(), counts.cuda())
    for plan in (None, plan_decode(gc, heads_q=Hq, pages=pd, counts=cd)):
        out = torch.full_like(qd, float("nan"))
        res, lse = paged_decode_attention(qd, gc, pages=pd, counts=cd, scale=0.3, return_lse=True, out=out, plan=plan)
        assert res is out
        check(out, lse, cc, q, pages, counts, dtype, f"plan={plan is not None} select={select}")
        assert (out[4] == 0).all() and torch.isinf(lse[4]).all()


@pytest.mark.parametrize("select", [False, True])
def test_every_worker_count_and_repeated_launches(select):
    dtype, Hq, Hkv, D, ps = torch.bfloat16, 8, 2, 128, 16
    cc, gc, q, pages, counts = case(LENS, Hq, Hkv, D, dtype, ps, select, seed=5)
    qd = q.cuda()
    pd, cd = (None, None) if pages is None else (pages.cuda(), counts.cuda())
    cap = cuda_max_workers(gc.k_pages, Hq)
    for workers in sorted(set(list(range(1, 40)) + [cap - 1, cap, cap + 1, 2 * cap + 3])):
        plan = plan_decode(gc, heads_q=Hq, pages=pd, counts=cd, num_workers=max(1, workers), tile_tokens=32)
        first = None
        for _ in range(3):  # one plan, three launches: the flags must come back zeroed
            out, lse = paged_decode_attention(qd, gc, pages=pd, counts=cd, scale=0.3, return_lse=True, plan=plan)
            if first is None:
                first = (out.clone(), lse.clone())
                check(out, lse, cc, q, pages, counts, dtype, f"workers={workers}")
            else:  # deterministic: partials merged in worker order
                assert torch.equal(out, first[0]) and torch.equal(lse, first[1]), workers
            slots = int(plan.slot_base[-1])
            flags = plan.ws_state.reshape(-1)[slots * (Hq // Hkv) * 2:].view(torch.int32)
            assert int(flags.abs().sum()) == 0, f"flags left set, workers={workers}"


def test_separate_merge_equals_in_kernel_fixup(monkeypatch):
    dtype, Hq, Hkv, D, ps = torch.float16, 4, 2, 64, 16
    cc, gc, q, _, _ = case(LENS, Hq, Hkv, D, dtype, ps, False, seed=9)
    qd = q.cuda()
    plan = plan_decode(gc, heads_q=Hq, num_workers=7, tile_tokens=48)
    a = paged_decode_attention(qd, gc, plan=plan, scale=0.3, return_lse=True)
    monkeypatch.setenv("SPARSE_ATTN_DECODE_MERGE", "separate")
    b = paged_decode_attention(qd, gc, plan=plan, scale=0.3, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same merges in the same order
    check(*b, cc, q, None, None, dtype, "separate merge")


def test_smoke_decode_for_sanitizers():
    """Small and quick, for compute-sanitizer (bench/gpu_check.sh runs -k smoke)."""
    cc, gc, q, _, _ = case([40, 150, 3], 8, 2, 64, torch.bfloat16, 16, False, seed=1)
    plan = plan_decode(gc, heads_q=8, num_workers=5, tile_tokens=16)
    out, lse = paged_decode_attention(q.cuda(), gc, plan=plan, scale=0.3, return_lse=True)
    check(out, lse, cc, q, None, None, torch.bfloat16, "smoke")


def test_unsupported_cases_raise_value_error():
    cc, gc, q, _, _ = case([40], 4, 2, 32, torch.bfloat16, 16, False)
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        paged_decode_attention(q.cuda(), gc)
    # the plain-value occupancy query behind plan_decode's default workers
    with pytest.raises(ValueError, match="dtype must be 'bfloat16' or 'float16', got 'float32'"):
        _C.cuda_decode_max_workers(q.cuda().device.index, "float32", 128, 4)
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        cuda_max_workers(gc.k_pages, 4)
    assert cuda_max_workers(torch.empty(1, 16, 2, 128, dtype=torch.bfloat16, device="cuda"), 8) >= 1
