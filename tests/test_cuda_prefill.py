"""The CUDA prefill engine (csrc/cuda/prefill): block-sparse, streaming and vertical-slash
attention (and the vertical-slash index) on a GPU,
against the float64 reference (flash-attention's 2x rule) and against the CPU engine.
Skipped without a CUDA device. Covers what the kernel supports: bfloat16/float16,
head_dim 64/128, block sizes that are multiples of 64."""
import math

import pytest
import torch

import sparse_attn
from sparse_attn import _C
from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask

from sparse_attn.vertical_slash import vertical_slash_attention, vertical_slash_index

from conftest import CUDA_OK, assert_close_2x, assert_lse_close, poisoned_like, qkv, same_precision_attention
from test_vertical_slash import ATTENTION_SHAPES, LIST_SIZES, random_lists

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (CUDA_OK and _C.cuda_compiled), reason="no CUDA device (or the CUDA engine not built)"),
]

DTYPES = [torch.bfloat16, torch.float16]


def block_map(B, H, MB, NB, density, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((B, H, MB, NB), generator=g) < density


def opt_cpu(t):
    return None if t is None else t.cpu()


def check_block_sparse(q, k, v, mask, causal, dtype, what):
    """CUDA output vs the float64 reference (2x rule) and vs the CPU engine; returns (out, lse)."""
    Sq, Sk = q.shape[1], k.shape[1]
    out = poisoned_like(q)
    res, lse = sparse_attn.block_sparse_attention(q, k, v, mask, causal=causal, return_lse=True, out=out)
    torch.cuda.synchronize()
    assert res is out and out.is_cuda and lse.is_cuda
    lists = dict(full_counts=opt_cpu(mask.full_counts), full_indices=opt_cpu(mask.full_indices))
    out_ref, lse_ref = ref.block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), mask.counts.cpu(), mask.indices.cpu(),
                                                  mask.block_size, causal=causal, return_lse=True, **lists)
    dense = ref.block_sparse_dense_mask(mask.counts.cpu(), mask.indices.cpu(), mask.block_size, Sq, Sk,
                                        causal=causal, **lists)
    out_pt = same_precision_attention(q.cpu(), k.cpu(), v.cpu(), dense)
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)
    cpu_mask = BlockSparseMask(mask.counts.cpu(), mask.indices.cpu(), mask.block_size,
                               full_counts=lists["full_counts"], full_indices=lists["full_indices"])
    out_cpu = sparse_attn.block_sparse_attention(q.cpu(), k.cpu(), v.cpu(), cpu_mask, causal=causal)
    assert_close_2x(out.cpu(), out_cpu.double(), out_pt, dtype, what + " vs CPU engine")
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D,bq,bk", [
    (2, 256, 256, 4, 2, 64, 64, 64),     # GQA, batch 2
    (1, 200, 300, 4, 1, 128, 64, 128),   # Sq < Sk (bottom-right), ragged, MQA
    (2, 130, 130, 2, 2, 64, 128, 128),   # ragged, last blocks nearly empty
    (1, 384, 384, 8, 2, 128, 128, 64),   # bq > bk: two 64-row tiles per mask row
    (1, 300, 200, 2, 1, 64, 64, 64),     # Sq > Sk: the first rows see no key when causal
    (1, 1000, 1100, 2, 2, 128, 64, 192), # many chunks per row: the 2-stage pipeline
])
@pytest.mark.parametrize("causal", [True, False])
def test_random_masks(dtype, B, Sq, Sk, Hq, Hkv, D, bq, bk, causal):
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, "cuda", seed=Sq + D)
    MB, NB = math.ceil(Sq / bq), math.ceil(Sk / bk)
    bmap = block_map(B, Hq, MB, NB, 0.5, seed=7)
    bmap[:, :, 1] = False  # an empty row: zeros and lse -inf
    mask = BlockSparseMask.from_dense(bmap.cuda(), (bq, bk))
    out, lse = check_block_sparse(q, k, v, mask, causal, dtype, f"{dtype} {Sq}x{Sk} D={D} causal={causal}")
    assert (out[:, bq:min(2 * bq, Sq)] == 0).all()
    assert torch.isinf(lse[:, :, bq:min(2 * bq, Sq)]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128])
def test_all_blocks_equal_dense_sdpa(dtype, D):
    B, S, Hq, Hkv = 2, 320, 4, 2
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, "cuda", seed=3)
    nb = math.ceil(S / 64)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, nb, nb, dtype=torch.bool, device="cuda"), 64)
    out = sparse_attn.block_sparse_attention(q, k, v, mask)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    want = torch.nn.functional.scaled_dot_product_attention(t(q.double()), t(k.double()), t(v.double()),
                                                            is_causal=True, enable_gqa=True)
    out_pt = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, enable_gqa=True)
    assert_close_2x(out.cpu(), t(want).cpu(), t(out_pt).cpu(), dtype, "all blocks vs dense SDPA")


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_lists_broadcast_and_strided_inputs(dtype):
    B, S, Hq, Hkv, D, bs = 2, 448, 4, 2, 64, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, "cuda", seed=11, layout="bhsd")  # HF layout, strided
    nb = math.ceil(S / bs)
    bmap = block_map(1, Hq, nb, nb, 0.4, seed=5)
    causal_blocks = torch.ones(nb, nb, dtype=torch.bool).tril(-1)
    full = bmap & causal_blocks  # strictly below the diagonal: no element mask needed
    partial = bmap & ~full
    m = BlockSparseMask.from_dense(partial.cuda(), bs)
    f = BlockSparseMask.from_dense(full.cuda(), bs)
    mask = BlockSparseMask(m.counts, m.indices, bs, full_counts=f.counts, full_indices=f.indices)
    check_block_sparse(q, k, v, mask, True, dtype, "full lists, broadcast batch, [B,H,S,D] views")


def test_misaligned_views_are_copied_not_misread():
    # A view that starts 1 element into its storage cannot be read with 16-byte loads: the
    # glue copies it first. The result must not change.
    B, S, H, D = 1, 192, 2, 64
    q, k, v = qkv(B, S, S, H, H, D, torch.bfloat16, "cuda", seed=2)
    qo = torch.empty(q.numel() + 8, dtype=q.dtype, device="cuda")[1:1 + q.numel()].view(q.shape)
    qo.copy_(q)
    nb = S // 64
    mask = BlockSparseMask.from_dense(block_map(1, 1, nb, nb, 0.7, seed=1).cuda(), 64)
    a = sparse_attn.block_sparse_attention(q, k, v, mask)
    b = sparse_attn.block_sparse_attention(qo, k, v, mask)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Sq,Sk,Hq,Hkv,D,sink,window", [
    (512, 512, 4, 2, 64, 64, 128),
    (300, 700, 2, 1, 128, 4, 100),    # ragged, Sq < Sk, a window edge inside chunks
    (257, 257, 2, 2, 64, 0, 64),      # no sink
    (200, 200, 2, 1, 128, 1000, 0),   # no window: sink only (more than the sequence)
    (130, 130, 2, 2, 64, 0, 0),       # nothing visible: zeros and lse -inf
    (640, 640, 2, 1, 64, 100, 300),   # sink and window far apart: two spans
])
def test_streaming(dtype, Sq, Sk, Hq, Hkv, D, sink, window):
    q, k, v = qkv(1, Sq, Sk, Hq, Hkv, D, dtype, "cuda", seed=Sq + sink)
    out = poisoned_like(q)
    _, lse = sparse_attn.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window, return_lse=True,
                                             out=out)
    torch.cuda.synchronize()
    out_ref, lse_ref = ref.streaming_attention(q.cpu(), k.cpu(), v.cpu(), sink_tokens=sink, window_tokens=window,
                                               return_lse=True)
    dense = ref.streaming_dense_mask(Sq, Sk, sink, window)
    out_pt = same_precision_attention(q.cpu(), k.cpu(), v.cpu(), dense)
    what = f"streaming {Sq}x{Sk} sink={sink} window={window}"
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)
    out_cpu = sparse_attn.streaming_attention(q.cpu(), k.cpu(), v.cpu(), sink_tokens=sink, window_tokens=window)
    assert_close_2x(out.cpu(), out_cpu.double(), out_pt, dtype, what + " vs CPU engine")


def check_vertical_slash(q, k, v, vertical, slash, causal, dtype, what, scale=None):
    """CUDA output vs the float64 reference (2x rule) and vs the CPU engine; rows that see no
    key must be exactly zero with lse -inf. Returns (out, lse)."""
    out = poisoned_like(q)
    res, lse = vertical_slash_attention(q, k, v, vertical, slash, causal=causal, scale=scale, return_lse=True,
                                        out=out)
    torch.cuda.synchronize()
    assert res is out and out.is_cuda and lse.is_cuda
    qc, kc, vc, vl, sl = q.cpu(), k.cpu(), v.cpu(), vertical.cpu(), slash.cpu()
    out_ref, lse_ref = ref.vertical_slash_attention(qc, kc, vc, vl, sl, causal=causal, scale=scale, return_lse=True)
    dense = ref.vertical_slash_dense_mask(vl, sl, q.shape[1], k.shape[1], causal=causal)
    out_pt = same_precision_attention(qc, kc, vc, dense, scale=scale)
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)
    empty = ~dense.expand(q.shape[0], q.shape[2], -1, -1).any(-1)  # [B, Hq, Sq]
    assert (out.cpu().transpose(1, 2)[empty] == 0).all(), f"{what}: empty rows are not zero"
    assert (lse.cpu()[empty] == -math.inf).all(), f"{what}: empty rows' lse is not -inf"
    out_cpu = vertical_slash_attention(qc, kc, vc, vl, sl, causal=causal, scale=scale)
    assert_close_2x(out.cpu(), out_cpu.double(), out_pt, dtype, what + " vs CPU engine")
    return out, lse


# The CPU engine's cases (tests/test_vertical_slash.py; head_dim 32 runs as 64 here), then
# CUDA-specific ones.
VS_CASES = [(B, Sq, Sk, Hq, Hkv, D if D in (64, 128) else 64, NV, NS, True)
            for B, Sq, Sk, Hq, Hkv, D in ATTENTION_SHAPES for NV, NS in LIST_SIZES] + [
    (1, 1000, 1100, 2, 1, 64, 300, 40, True),   # many chunks and columns: the 2-stage pipeline, 5 column tiles
    (1, 256, 320, 2, 1, 128, 20, 10, False),    # not causal: columns past the diagonal
    (1, 250, 180, 2, 1, 64, 20, 10, False),     # not causal, Sq > Sk: the first rows see columns only
    (1, 250, 180, 2, 2, 128, 0, 7, False),      # not causal, Sq > Sk, no columns: empty rows
    (1, 320, 320, 2, 2, 64, 500, 500, True),    # budgets past the sequence: dense causal
    (2, 64, 64, 2, 2, 128, 5, 5, True),         # a single tile
    (1, 1, 77, 2, 1, 64, 9, 4, True),           # one query row, bottom-right
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D,NV,NS,causal", VS_CASES)
def test_vertical_slash(dtype, B, Sq, Sk, Hq, Hkv, D, NV, NS, causal):
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, "cuda", seed=Sq + NV)
    vertical, slash = random_lists(B, Hq, NV, NS, Sk, seed=Sk + NS)
    check_vertical_slash(q, k, v, vertical.cuda(), slash.cuda(), causal, dtype,
                         f"vertical-slash {Sq}x{Sk} D={D} NV={NV} NS={NS} causal={causal}")


def test_vertical_slash_empty_rows_are_zero():
    """Sq > Sk, causal: the first Sq - Sk rows see no key at all."""
    q, k, v = qkv(1, 250, 180, 2, 1, 64, torch.bfloat16, "cuda", seed=1)
    vertical, slash = random_lists(1, 2, 12, 6, 180, seed=2)
    out, lse = check_vertical_slash(q, k, v, vertical.cuda(), slash.cuda(), True, torch.bfloat16, "empty rows")
    assert (out[:, :70] == 0).all() and (lse[:, :, :70] == -math.inf).all()
    assert torch.isfinite(lse[:, :, 70:]).all()


def test_vertical_slash_broadcast_lists_and_strided_inputs():
    B, S, Hq, Hkv, D = 2, 333, 4, 2, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, torch.bfloat16, "cuda", seed=5, layout="bhsd")  # HF layout, strided
    vertical, slash = random_lists(1, 1, 30, 12, S, seed=6)
    check_vertical_slash(q, k, v, vertical.cuda(), slash.cuda(), True, torch.bfloat16, "broadcast lists")
    vertical, slash = random_lists(1, Hq, 30, 12, S, seed=7)  # per-head columns, batch-broadcast
    check_vertical_slash(q, k, v, vertical.cuda(), slash.cuda()[:, :1], True, torch.bfloat16, "broadcast batch",
                         scale=0.3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vertical_slash_budget_past_sequence_equals_dense_sdpa(dtype):
    B, S, Hq, Hkv, D = 1, 333, 4, 2, 128
    q, k, v = qkv(B, S, S, Hq, Hkv, D, dtype, "cuda", seed=11)
    vertical = torch.arange(S + 10, dtype=torch.int32, device="cuda").expand(B, Hq, -1)
    slash = vertical.flip(-1)
    out = vertical_slash_attention(q, k, v, vertical, slash)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    want = torch.nn.functional.scaled_dot_product_attention(t(q.double()), t(k.double()), t(v.double()),
                                                            is_causal=True, enable_gqa=True)
    out_pt = torch.nn.functional.scaled_dot_product_attention(t(q), t(k), t(v), is_causal=True, enable_gqa=True)
    assert_close_2x(out.cpu(), t(want).cpu(), t(out_pt).cpu(), dtype, "vertical-slash budget past sequence")


@pytest.mark.parametrize("Sq,Sk,bs", [(300, 300, 64), (130, 401, 64), (250, 180, 64), (257, 257, 128),
                                      (100, 100, 16), (333, 333, 100), (5, 0, 64), (70, 70, 1)])
@pytest.mark.parametrize("NV,NS", [(7, 5), (40, 60), (0, 0), (600, 600)])
def test_vertical_slash_index_equals_cpu(Sq, Sk, bs, NV, NS):
    """The device conversion (vs_index_flat_row per row) gives the CPU op's tensors, bit for bit."""
    vertical, slash = random_lists(2, 3, NV, NS, max(Sk, 1), seed=Sq + NV + bs)
    got = vertical_slash_index(vertical.cuda(), slash.cuda(), seqlen_q=Sq, seqlen_k=Sk, block_size=bs)
    want = vertical_slash_index(vertical, slash, seqlen_q=Sq, seqlen_k=Sk, block_size=bs)
    for g, w in zip(got, want):
        assert g.is_cuda and g.dtype == w.dtype and g.shape == w.shape and torch.equal(g.cpu(), w)


def _raw_lists(entries, heads, count):
    lst = torch.tensor([[entries]], dtype=torch.int32).expand(1, heads, -1).contiguous()
    return lst, torch.full((1, heads), count, dtype=torch.int32)


def test_vertical_slash_raw_op_validates_and_stays_in_bounds_like_cpu():
    """The op itself (no Python normalization), as on the CPU: repeated and too large entries
    and counts past the capacity are tolerated (the same pattern as the normalized lists),
    unsorted ones stay in bounds, negative ones raise; the index op agrees with the CPU's."""
    q, k, v = qkv(1, 200, 200, 2, 1, 64, torch.bfloat16, "cuda", seed=2)
    op = torch.ops.sparse_attn
    lst, cnt = _raw_lists([1, 3, 3, 7, 90, 500], 2, 99)  # ascending, a repeat, one past the end, count > 6
    out = poisoned_like(q)
    op.vertical_slash_attention(q, k, v, out, lst.cuda(), cnt.cuda(), lst.cuda(), cnt.cuda(), True, 0.125)
    torch.cuda.synchronize()
    qc, kc, vc = q.cpu(), k.cpu(), v.cpu()
    out_ref = ref.vertical_slash_attention(qc, kc, vc, lst, lst, scale=0.125)
    out_pt = same_precision_attention(qc, kc, vc, ref.vertical_slash_dense_mask(lst, lst, 200, 200), scale=0.125)
    assert_close_2x(out.cpu(), out_ref, out_pt, torch.bfloat16, "raw op, repeats and entries past the end")
    # Unsorted lists: the pattern is what the shared code makes of them, on either engine;
    # the CPU engine in float32 on the same inputs is the reference, in bfloat16 the yardstick.
    for args in ((lst, cnt, lst, cnt), _raw_lists([90, 7, 3, 3, 500, 1], 2, 99) * 2):
        dev = [t.cuda() for t in args]
        out = poisoned_like(q)
        op.vertical_slash_attention(q, k, v, out, *dev, True, 0.125)
        out_cpu, out_cpu32 = torch.empty_like(qc), torch.empty(qc.shape)
        op.vertical_slash_attention(qc, kc, vc, out_cpu, *args, True, 0.125)
        op.vertical_slash_attention(qc.float(), kc.float(), vc.float(), out_cpu32, *args, True, 0.125)
        assert_close_2x(out.cpu(), out_cpu32.double(), out_cpu, torch.bfloat16, "raw op vs CPU engine")
        for g, w in zip(op.vertical_slash_index(*dev, 200, 200, 64), op.vertical_slash_index(*args, 200, 200, 64)):
            assert torch.equal(g.cpu(), w)
    neg = lst.clone()
    neg[0, 1, 4] = -3
    with pytest.raises(ValueError, match="slash holds negative"):
        op.vertical_slash_attention(q, k, v, out, lst.cuda(), cnt.cuda(), neg.cuda(), cnt.cuda(), True, 0.125)
    with pytest.raises(ValueError, match="vertical holds negative"):
        op.vertical_slash_index(neg.cuda(), cnt.cuda(), lst.cuda(), cnt.cuda(), 200, 200, 64)


def test_vertical_slash_errors_on_cuda():
    q, k, v = qkv(1, 128, 128, 2, 2, 64, torch.bfloat16, "cuda")
    vertical, slash = random_lists(1, 2, 5, 5, 128, seed=1)
    with pytest.raises(ValueError, match="must be on device"):  # lists left on the CPU
        vertical_slash_attention(q, k, v, vertical, slash)
    q32, k32, v32 = qkv(1, 128, 128, 2, 2, 64, torch.float32, "cuda")
    with pytest.raises(ValueError, match="bfloat16 and float16"):
        vertical_slash_attention(q32, k32, v32, vertical.cuda(), slash.cuda())
    q80, k80, v80 = qkv(1, 128, 128, 2, 2, 80, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        vertical_slash_attention(q80, k80, v80, vertical.cuda(), slash.cuda())
    with pytest.raises(ValueError, match="head"):  # 3 list heads for 2 query heads
        vertical_slash_attention(q, k, v, torch.zeros(1, 3, 2, dtype=torch.int32, device="cuda"), slash.cuda())


def test_vertical_slash_current_stream_is_used():
    """The index kernels and the attention run on the caller's stream, in order."""
    q, k, v = qkv(1, 1024, 1024, 4, 2, 128, torch.bfloat16, "cuda", seed=9)
    vertical, slash = (t.cuda() for t in random_lists(1, 4, 200, 100, 1024, seed=9))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = vertical_slash_attention(q, k, v, vertical, slash)
        idx = vertical_slash_index(vertical, slash, seqlen_q=1024, seqlen_k=1024)
    s.synchronize()
    assert torch.equal(out, vertical_slash_attention(q, k, v, vertical, slash))
    for g, w in zip(idx, vertical_slash_index(vertical, slash, seqlen_q=1024, seqlen_k=1024)):
        assert torch.equal(g, w)


def test_unsupported_cases_raise_clearly():
    q, k, v = qkv(1, 128, 128, 2, 2, 64, torch.float32, "cuda")
    with pytest.raises(ValueError, match="bfloat16 and float16"):
        sparse_attn.streaming_attention(q, k, v, sink_tokens=4, window_tokens=64)
    q, k, v = qkv(1, 128, 128, 2, 2, 80, torch.bfloat16, "cuda")
    with pytest.raises(ValueError, match="head_dim 64 or 128"):
        sparse_attn.streaming_attention(q, k, v, sink_tokens=4, window_tokens=64)
    q, k, v = qkv(1, 128, 128, 2, 2, 64, torch.bfloat16, "cuda")
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 4, 2, dtype=torch.bool, device="cuda"), (32, 64))
    with pytest.raises(ValueError, match="multiples of 64"):
        sparse_attn.block_sparse_attention(q, k, v, mask)


def test_validation_reads_device_lists():
    q, k, v = qkv(1, 128, 128, 2, 2, 64, torch.bfloat16, "cuda")
    counts = torch.tensor([[[1, 1]]], dtype=torch.int32, device="cuda")
    indices = torch.tensor([[[[0], [7]]]], dtype=torch.int32, device="cuda")  # block 7 does not exist
    mask = BlockSparseMask(counts, indices, 64)
    with pytest.raises(ValueError, match="out of range"):
        sparse_attn.block_sparse_attention(q, k, v, mask)


def test_current_stream_is_used():
    q, k, v = qkv(1, 1024, 1024, 4, 2, 128, torch.bfloat16, "cuda", seed=9)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = sparse_attn.streaming_attention(q, k, v, sink_tokens=64, window_tokens=256)
    s.synchronize()
    want = sparse_attn.streaming_attention(q, k, v, sink_tokens=64, window_tokens=256)
    assert torch.equal(out, want)


def test_smoke_small_case_for_sanitizers():
    """The small case gpu_check.sh runs under compute-sanitizer (memcheck, racecheck)."""
    q, k, v = qkv(1, 130, 200, 2, 1, 64, torch.bfloat16, "cuda", seed=4)
    mask = BlockSparseMask.from_dense(block_map(1, 2, 3, 4, 0.6, seed=3).cuda(), 64)
    check_block_sparse(q, k, v, mask, True, torch.bfloat16, "sanitizer case")
    sparse_attn.streaming_attention(q, k, v, sink_tokens=10, window_tokens=70)
    vertical, slash = random_lists(1, 2, 80, 6, 200, seed=7)  # 80 columns: two gathered tiles, the second ragged
    check_vertical_slash(q, k, v, vertical.cuda(), slash.cuda(), True, torch.bfloat16, "sanitizer case (vs)")
    q2 = qkv(1, 150, 200, 2, 1, 64, torch.bfloat16, "cuda", seed=5)[0]
    check_vertical_slash(q2, k, v, vertical.cuda(), slash.cuda(), False, torch.bfloat16,
                         "sanitizer case (vs, not causal)")
    vertical_slash_index(vertical.cuda(), slash.cuda(), seqlen_q=130, seqlen_k=200, block_size=100)
    torch.cuda.synchronize()
