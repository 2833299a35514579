"""torch.compile(fullgraph=True) and torch.library.opcheck for the registered ops.

The compiled results must equal eager (float32: bit-identical or within 1e-6) and match the
float64 reference; opcheck verifies the schema (the ``out`` mutation is declared), the fake
kernels in ``sparse_attn/_ops.py`` (shape/dtype/device of lse) and AOT dispatch.
"""
import math

import pytest
import torch

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask

from conftest import qkv


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_same(compiled, eager):
    assert compiled.shape == eager.shape and compiled.dtype == eager.dtype
    if not torch.equal(compiled, eager):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)


def assert_ref(out, want, what):
    err = (out.double() - want).abs().max().item()
    assert err < 1e-4, f"{what}: error {err:.3g} against the float64 reference"


def random_mask(B, H, MB, NB, bs, seed, p=0.5):
    bmap = torch.rand((B, H, MB, NB), generator=gen(seed)) < p
    bmap[..., 0, 0] = True
    return BlockSparseMask.from_dense(bmap, bs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_block_sparse_captured_mask():
    """The mask's tensors are captured from the enclosing scope (graph constants)."""
    B, Sq, Sk, Hq, Hkv, D, bq, bk = 2, 200, 330, 4, 2, 64, 64, 64
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, torch.float32, seed=1)
    mask = random_mask(B, Hq, math.ceil(Sq / bq), math.ceil(Sk / bk), (bq, bk), seed=2)

    @torch.compile(fullgraph=True)
    def fn(q, k, v):
        return sparse_attn.block_sparse_attention(q, k, v, mask, return_lse=True)

    out_c, lse_c = fn(q, k, v)
    out_e, lse_e = sparse_attn.block_sparse_attention(q, k, v, mask, return_lse=True)
    assert_same(out_c, out_e)
    assert_same(lse_c, lse_e)
    want, want_lse = ref.block_sparse_attention(q, k, v, mask.counts, mask.indices, mask.block_size,
                                                return_lse=True)
    assert_ref(out_c, want, "captured mask")
    fin = torch.isfinite(want_lse)
    assert torch.equal(torch.isfinite(lse_c), fin)
    assert (lse_c.double() - want_lse)[fin].abs().max() < 1e-4


@pytest.mark.parametrize("causal", [True, False])
def test_compile_block_sparse_mask_built_inside(causal):
    """counts/indices (and full lists) are graph inputs; the BlockSparseMask is built in the graph,
    the output is post-processed in the graph, and an out= buffer is written in place."""
    B, S, Hq, Hkv, D, bs = 1, 256, 4, 1, 64, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, torch.float32, seed=3 + causal)
    nb = S // bs
    part = torch.rand((B, Hq, nb, nb), generator=gen(4)) < 0.4
    full = torch.rand((B, Hq, nb, nb), generator=gen(5)) < 0.4
    if causal:  # full blocks must be fully visible: strictly below the diagonal
        full &= torch.tril(torch.ones(nb, nb, dtype=torch.bool), -1)
    pm, fm = BlockSparseMask.from_dense(part, bs), BlockSparseMask.from_dense(full, bs)

    def fn(q, k, v, counts, indices, full_counts, full_indices, out):
        mask = BlockSparseMask(counts, indices, (bs, bs), full_counts, full_indices)
        o, lse = sparse_attn.block_sparse_attention(q, k, v, mask, causal=causal, return_lse=True, out=out)
        return o * 2.0, lse * 0.5  # exact post-processing (eager and inductor exp may differ by an ulp)

    args = (pm.counts, pm.indices, fm.counts, fm.indices)
    buf_c = torch.full_like(q, float("nan"))
    buf_e = torch.full_like(q, float("nan"))
    res_c = torch.compile(fn, fullgraph=True)(q, k, v, *args, buf_c)
    res_e = fn(q, k, v, *args, buf_e)
    assert_same(res_c[0], res_e[0])
    assert_same(res_c[1], res_e[1])
    assert_same(buf_c, buf_e)  # the in-place write survives functionalization
    want = ref.block_sparse_attention(q, k, v, pm.counts, pm.indices, (bs, bs), full_counts=fm.counts,
                                      full_indices=fm.indices, causal=causal)
    assert_ref(buf_c, want, f"built inside, causal={causal}")
    assert_ref(res_c[0] / 2, want, f"built inside, causal={causal}")


def test_compile_block_sparse_runtime_validation_still_raises():
    """Index validation runs in the real kernel, so a compiled call still rejects bad indices."""
    q, k, v = qkv(1, 128, 128, 2, 1, 64, torch.float32, seed=6)

    @torch.compile(fullgraph=True)
    def fn(q, k, v, counts, indices):
        return sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(counts, indices, 64))

    counts = torch.tensor([[[1, 2]]], dtype=torch.int32)
    good = torch.tensor([[[[0, 5], [0, 1]]]], dtype=torch.int32)
    bad = torch.tensor([[[[0, 5], [1, 0]]]], dtype=torch.int32)
    out = fn(q, k, v, counts, good)
    assert_ref(out, ref.attention(q, k, v, ref.causal_mask(128, 128)), "compiled, good indices")
    with pytest.raises(ValueError, match=r"indices\[0, 0, 1\] must be strictly ascending"):
        fn(q, k, v, counts, bad)


@pytest.mark.parametrize("sink,window", [(4, 64), (0, 100), (37, 1)])
def test_compile_streaming(sink, window):
    B, Sq, Sk, Hq, Hkv, D = 2, 130, 300, 4, 2, 64
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, torch.float32, seed=sink + window)

    @torch.compile(fullgraph=True)
    def fn(q, k, v):
        o, lse = sparse_attn.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window,
                                                 return_lse=True, scale=0.1)
        return o + 1.0, lse

    o_c, lse_c = fn(q, k, v)
    o_e, lse_e = sparse_attn.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window,
                                                 return_lse=True, scale=0.1)
    assert_same(o_c - 1.0, o_e)
    assert_same(lse_c, lse_e)
    want = ref.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window, scale=0.1)
    assert_ref(o_c - 1.0, want, f"streaming sink={sink} window={window}")


def test_compile_transposed_inputs():
    """Hugging Face [B, H, S, D] tensors passed as transposed views compile without copies."""
    q, k, v = qkv(1, 192, 192, 4, 2, 64, torch.float32, seed=7, layout="bhsd")
    mask = random_mask(1, 1, 3, 3, 64, seed=8)

    @torch.compile(fullgraph=True)
    def fn(q, k, v):
        return (sparse_attn.block_sparse_attention(q, k, v, mask),
                sparse_attn.streaming_attention(q, k, v, sink_tokens=8, window_tokens=40))

    a_c, b_c = fn(q, k, v)
    assert_same(a_c, sparse_attn.block_sparse_attention(q, k, v, mask))
    assert_same(b_c, sparse_attn.streaming_attention(q, k, v, sink_tokens=8, window_tokens=40))
    assert_ref(a_c, ref.block_sparse_attention(q, k, v, mask.counts, mask.indices, mask.block_size), "bhsd")
    assert_ref(b_c, ref.streaming_attention(q, k, v, sink_tokens=8, window_tokens=40), "bhsd streaming")


# --------------------------------------------------------------------------- opcheck

# All of opcheck's default sub-tests apply and pass today ("test_schema", "test_autograd_registration",
# "test_faketensor", "test_aot_dispatch_dynamic"): the ops are forward-only and none of their
# inputs require grad here, so test_autograd_registration has nothing to object to. We list
# them explicitly (adding the static AOT variant) so a future opcheck default change cannot
# silently drop the two that matter most, test_schema and test_faketensor.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_static", "test_aot_dispatch_dynamic")


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)
    assert result == {name: "SUCCESS" for name in OPCHECK_UTILS}, result


@pytest.mark.parametrize("causal,with_full", [(True, False), (False, True), (True, True)])
def test_opcheck_block_sparse(causal, with_full):
    B, S, Hq, Hkv, D, bs = 2, 128, 4, 2, 64, 64
    q, k, v = qkv(B, S, S, Hq, Hkv, D, torch.float32, seed=9)
    part = random_mask(B, 1, 2, 2, bs, seed=10)
    full_counts = full_indices = None
    if with_full:
        fmap = torch.zeros(1, Hq, 2, 2, dtype=torch.bool)
        fmap[:, 1:, 1, 0] = True  # strictly below the diagonal: fully visible under causal
        fm = BlockSparseMask.from_dense(fmap, bs)
        full_counts, full_indices = fm.counts, fm.indices
    out = torch.full_like(q, float("nan"))
    args = (q, k, v, out, part.counts, part.indices, full_counts, full_indices, bs, bs, causal,
            D ** -0.5, True)
    _opcheck(torch.ops.sparse_attn.block_sparse_attention.default, args)
    # The fake kernel promises lse [B, Hq, Sq] float32; the real kernel must keep it.
    lse = torch.ops.sparse_attn.block_sparse_attention(*args)
    assert lse.shape == (B, Hq, S) and lse.dtype == torch.float32
    want = ref.block_sparse_attention(q, k, v, part.counts, part.indices, (bs, bs), full_counts=full_counts,
                                      full_indices=full_indices, causal=causal)
    assert_ref(out, want, "direct op call")


@pytest.mark.parametrize("sink,window", [(4, 64), (0, 0)])
def test_opcheck_streaming(sink, window):
    B, Sq, Sk, Hq, Hkv, D = 1, 100, 160, 4, 1, 64
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, torch.float32, seed=11)
    out = torch.full_like(q, float("nan"))
    args = (q, k, v, out, sink, window, 0.2)
    _opcheck(torch.ops.sparse_attn.streaming_attention.default, args)
    lse = torch.ops.sparse_attn.streaming_attention(*args)
    assert lse.shape == (B, Hq, Sq) and lse.dtype == torch.float32
    assert_ref(out, ref.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window, scale=0.2),
               "direct streaming op call")


def test_fake_kernels_match_real_outputs():
    """Shapes/dtypes from FakeTensorMode equal the real ones (including Sq != Sk, GQA)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v = qkv(2, 96, 200, 6, 3, 64, torch.float32, seed=12)
    mask = random_mask(1, 1, 2, 4, 64, seed=13)
    real = sparse_attn.block_sparse_attention(q, k, v, mask, return_lse=True)
    real_s = sparse_attn.streaming_attention(q, k, v, sink_tokens=2, window_tokens=30, return_lse=True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        fake = torch.ops.sparse_attn.block_sparse_attention(
            fq, fk, fv, torch.empty_like(fq), mode.from_tensor(mask.counts), mode.from_tensor(mask.indices),
            None, None, 64, 64, True, 0.125, True)
        fake_s = torch.ops.sparse_attn.streaming_attention(fq, fk, fv, torch.empty_like(fq), 2, 30, 0.125)
    for f, r in ((fake, real[1]), (fake_s, real_s[1])):
        assert f.shape == r.shape and f.dtype == r.dtype and f.device == r.device
