"""Bad input gets a ValueError whose message names the offending argument.

Every rejection test has a positive twin (the same inputs minus the one defect run and
match the float64 reference), so a check that fires for the wrong reason, or an input
builder that is broken, shows up as a failure instead of a vacuous pass.
"""
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

import sparse_attn
from sparse_attn import reference as ref
from sparse_attn.masks import BlockSparseMask

from conftest import qkv

B, S, HQ, HKV, D, BS = 2, 256, 4, 2, 64, 64
NBLK = S // BS  # 4 query blocks, 4 key blocks


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rnd(shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=gen(seed)).to(dtype)


def inputs(seed=0):
    return qkv(B, S, S, HQ, HKV, D, torch.float32, seed=seed)


def causal_mask():
    return BlockSparseMask.from_dense(torch.tril(torch.ones(1, 1, NBLK, NBLK, dtype=torch.bool)), BS)


def list_mask(counts, indices, **kw):
    return BlockSparseMask(torch.tensor(counts, dtype=torch.int32)[None, None],
                           torch.tensor(indices, dtype=torch.int32)[None, None], BS, **kw)


# A valid (counts, indices) pair with capacity K = 4: causal-compatible, sorted.
GOOD_COUNTS = [1, 2, 2, 3]
GOOD_INDICES = [[0, 7, 7, 7], [0, 1, 7, 7], [0, 2, 7, 7], [0, 2, 3, 7]]


def run_block_sparse(q, k, v, **kw):
    return sparse_attn.block_sparse_attention(q, k, v, causal_mask(), **kw)


def run_streaming(q, k, v, **kw):
    return sparse_attn.streaming_attention(q, k, v, sink_tokens=4, window_tokens=70, **kw)


OPS = [pytest.param(run_block_sparse, id="block_sparse"), pytest.param(run_streaming, id="streaming")]


def reference_for(op, q, k, v, scale=None):
    if op is run_block_sparse:
        m = ref.causal_mask(q.shape[1], k.shape[1])
    else:
        m = ref.streaming_dense_mask(q.shape[1], k.shape[1], 4, 70)
    return ref.attention(q, k, v, m, scale=scale)


# --------------------------------------------------------------------------- q / k / v / out / scale


@pytest.mark.parametrize("op", OPS)
def test_valid_inputs_run(op):
    """The positive twin of every case below."""
    q, k, v = inputs(1)
    out = op(q, k, v)
    assert (out.double() - reference_for(op, q, k, v)).abs().max() < 1e-4
    # Strided but last-dim-contiguous layouts are accepted.
    q2, k2, v2 = qkv(B, S, S, HQ, HKV, D, torch.float32, seed=1, layout="bhsd")
    out2 = op(q2, k2, v2)
    assert (out2.double() - reference_for(op, q2, k2, v2)).abs().max() < 1e-4
    # An out buffer of the right shape/dtype and an explicit positive scale are accepted.
    buf = torch.full_like(q, float("nan"))
    res = op(q, k, v, out=buf, scale=0.3)
    assert res is buf
    assert (buf.double() - reference_for(op, q, k, v, scale=0.3)).abs().max() < 1e-4


def _bad_qkv_cases():
    q, k, v = inputs(2)
    odd = rnd((B, S, HQ, 2 * D), seed=3)
    odd_k = rnd((B, S, HKV, 2 * D), seed=4)
    ints = [torch.randint(-5, 6, t.shape, generator=gen(i), dtype=torch.int32) for i, t in enumerate((q, k, v))]
    return [
        ("q_rank", (q[0], k, v), r"\bq must be \[batch, seqlen, heads, head_dim\]"),
        ("k_rank", (q, k[None], v), r"\bk must be \[batch, seqlen, heads, head_dim\]"),
        ("v_rank", (q, k, v[:, :, 0]), r"\bv must be \[batch, seqlen, heads, head_dim\]"),
        ("k_dtype", (q, k.half(), v), r"q, k and v must share a dtype"),
        ("v_dtype", (q, k, v.bfloat16()), r"q, k and v must share a dtype"),
        ("float64", (q.double(), k.double(), v.double()), r"\bq must be float32, bfloat16 or float16"),
        ("int32", tuple(ints), r"\bq must be float32, bfloat16 or float16"),
        ("heads", (rnd((B, S, 3, D), seed=5), k, v), r"q's heads \(3\) must be a multiple of k's heads \(2\)"),
        ("k_head_dim", (q, rnd((B, S, HKV, 32), seed=6), rnd((B, S, HKV, 32), seed=7)), r"k's head_dim 32 differs from q's 64"),
        ("v_shape", (q, k, rnd((B, S, HKV, 32), seed=8)), r"\bv must have k's shape"),
        ("head_dim_16", (rnd((B, S, HQ, 72), seed=9), rnd((B, S, HKV, 72), seed=10), rnd((B, S, HKV, 72), seed=11)),
         r"head_dim must be a multiple of 16"),
        ("q_stride", (odd[..., ::2], k, v), r"\bq must have a contiguous last dimension"),
        ("k_stride", (q, odd_k[..., ::2], v), r"\bk must have a contiguous last dimension"),
        ("v_stride", (q, k, odd_k[..., 1::2]), r"\bv must have a contiguous last dimension"),
        ("batch", (q, k[:1], v[:1]), r"k and v must have q's batch size"),
    ]


BAD_QKV = _bad_qkv_cases()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("case", BAD_QKV, ids=[c[0] for c in BAD_QKV])
def test_bad_qkv(op, case):
    _, (q, k, v), match = case
    with pytest.raises(ValueError, match=match):
        op(q, k, v)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("make_out", [
    lambda q: rnd((B, S, HQ, 32), seed=12),
    lambda q: rnd((B, S - 1, HQ, D), seed=13),
    lambda q: rnd(q.shape, torch.float16, seed=14),
    lambda q: rnd(q.shape, torch.float64, seed=15),
], ids=["head_dim", "seqlen", "float16", "float64"])
def test_bad_out(op, make_out):
    q, k, v = inputs(3)
    with pytest.raises(ValueError, match=r"\bout must match q"):
        op(q, k, v, out=make_out(q))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scale", [0.0, -0.125, float("nan"), float("inf")])
def test_bad_scale(op, scale):
    q, k, v = inputs(4)
    with pytest.raises(ValueError, match=r"\bscale must be a positive finite number"):
        op(q, k, v, scale=scale)


# --------------------------------------------------------------------------- streaming arguments


@pytest.mark.parametrize("sink,window,name", [(-1, 64, "sink_tokens"), (4, -1, "window_tokens"),
                                              (-100, -100, "sink_tokens"), (2.0, 64, "sink_tokens"),
                                              (4, 1.5, "window_tokens")])
def test_streaming_bad_tokens(sink, window, name):
    q, k, v = inputs(5)
    with pytest.raises(ValueError, match=rf"\b{name} must be an int >= 0"):
        sparse_attn.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window)


# --------------------------------------------------------------------------- block-sparse mask content


def test_good_list_mask_runs_and_garbage_past_count_is_not_read():
    q, k, v = inputs(6)
    mask = list_mask(GOOD_COUNTS, GOOD_INDICES)
    out = sparse_attn.block_sparse_attention(q, k, v, mask)
    want = ref.block_sparse_attention(q, k, v, mask.counts, mask.indices, (BS, BS))
    assert (out.double() - want).abs().max() < 1e-4
    # Out-of-range, negative, unsorted and duplicated entries past the count: never read.
    garbage = [[0, -5, 99, 0], [0, 1, 1, 0], [0, 2, -1, 2147483647], [0, 2, 3, -2147483648]]
    out2 = sparse_attn.block_sparse_attention(q, k, v, list_mask(GOOD_COUNTS, garbage))
    assert torch.equal(out2, out)


@pytest.mark.parametrize("counts,indices,match", [
    ([1, 5, 2, 3], GOOD_INDICES, r"\bcounts\[0, 0, 1\] = 5 is outside \[0, 4\]"),
    ([1, 2, -1, 3], GOOD_INDICES, r"\bcounts\[0, 0, 2\] = -1 is outside \[0, 4\]"),
    (GOOD_COUNTS, [[0, 7, 7, 7], [0, 4, 7, 7], [0, 2, 7, 7], [0, 2, 3, 7]],
     r"\bindices\[0, 0, 1\]\[1\] = 4 is out of range"),
    (GOOD_COUNTS, [[-1, 7, 7, 7], [0, 1, 7, 7], [0, 2, 7, 7], [0, 2, 3, 7]],
     r"\bindices\[0, 0, 0\]\[0\] = -1 is out of range"),
    (GOOD_COUNTS, [[0, 7, 7, 7], [0, 1, 7, 7], [0, 2, 7, 7], [0, 3, 2, 7]],
     r"\bindices\[0, 0, 3\] must be strictly ascending"),
    (GOOD_COUNTS, [[0, 7, 7, 7], [0, 1, 7, 7], [2, 2, 7, 7], [0, 2, 3, 7]],
     r"\bindices\[0, 0, 2\] must be strictly ascending"),
], ids=["count_gt_K", "count_negative", "index_too_big", "index_negative", "unsorted", "duplicate"])
def test_bad_indices(counts, indices, match):
    q, k, v = inputs(7)
    with pytest.raises(ValueError, match=match):
        sparse_attn.block_sparse_attention(q, k, v, list_mask(counts, indices))


def test_bad_full_indices_positions_are_named():
    q, k, v = inputs(8)
    good = list_mask(GOOD_COUNTS, GOOD_INDICES)
    fc = torch.tensor([[[0, 1, 1, 0]]], dtype=torch.int32)
    fi = torch.tensor([[[[3], [0], [5], [1]]]], dtype=torch.int32)  # [0,0,2][0] = 5 out of range
    with pytest.raises(ValueError, match=r"\bfull_indices\[0, 0, 2\]\[0\] = 5 is out of range"):
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(good.counts, good.indices, BS, fc, fi))
    fc2 = torch.tensor([[[0, 2, 0, 0]]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"\bfull_counts\[0, 0, 1\] = 2 is outside \[0, 1\]"):
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(good.counts, good.indices, BS, fc2, fi))


def test_validate_false_skips_index_checks():
    q, k, v = inputs(9)
    unsorted = [[0, 7, 7, 7], [1, 0, 7, 7], [2, 0, 7, 7], [3, 0, 2, 7]]  # in range, descending
    mask = list_mask(GOOD_COUNTS, unsorted)
    with pytest.raises(ValueError, match=r"\bindices\[0, 0, 1\] must be strictly ascending"):
        sparse_attn.block_sparse_attention(q, k, v, mask)
    out = sparse_attn.block_sparse_attention(q, k, v, mask, validate=False)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_counts_wrong_number_of_query_blocks():
    q, k, v = inputs(10)
    for mb in (3, 5):
        bmap = torch.rand(1, 1, mb, NBLK, generator=gen(mb)) < 0.6
        with pytest.raises(ValueError, match=rf"\bcounts must have {NBLK} query blocks"):
            sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask.from_dense(bmap, BS))


def test_counts_wrong_broadcast_dims():
    q, k, v = inputs(11)
    full = torch.tril(torch.ones(NBLK, NBLK, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\bcounts's head dimension must be 1 or 4"):
        # per KV head instead of per query head
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask.from_dense(full.expand(1, HKV, -1, -1), BS))
    with pytest.raises(ValueError, match=r"\bcounts's batch dimension must be 1 or 2"):
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask.from_dense(full.expand(3, 1, -1, -1), BS))
    # The accepted shapes run: per batch and per query head.
    out = sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask.from_dense(full.expand(B, HQ, -1, -1), BS))
    assert (out.double() - ref.attention(q, k, v, ref.causal_mask(S, S))).abs().max() < 1e-4


@pytest.mark.parametrize("bs,match", [((64, 32), r"block_size\[1\]"), ((64, 96), r"block_size\[1\]"),
                                      ((64, 16), r"block_size\[1\]"), ((60, 64), r"block_size\[0\]")])
def test_bad_block_size(bs, match):
    q, k, v = inputs(12)
    MB, NB = -(-S // bs[0]), -(-S // bs[1])
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, MB, NB, dtype=torch.bool), bs)
    with pytest.raises(ValueError, match=match):
        sparse_attn.block_sparse_attention(q, k, v, mask)


def test_block_size_128_accepted():
    q, k, v = inputs(13)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), (128, 128))
    out = sparse_attn.block_sparse_attention(q, k, v, mask)
    assert (out.double() - ref.attention(q, k, v, ref.causal_mask(S, S))).abs().max() < 1e-4


def test_full_lists_given_alone():
    good = list_mask(GOOD_COUNTS, GOOD_INDICES)
    with pytest.raises(ValueError, match=r"full_counts and full_indices must be given together"):
        BlockSparseMask(good.counts, good.indices, BS, full_counts=good.counts)
    with pytest.raises(ValueError, match=r"full_counts and full_indices must be given together"):
        BlockSparseMask(good.counts, good.indices, BS, full_indices=good.indices)
    # A mask mutated after construction reaches the op's own check.
    q, k, v = inputs(14)
    mask = list_mask(GOOD_COUNTS, GOOD_INDICES)
    mask.full_counts = mask.counts
    with pytest.raises(ValueError, match=r"full_counts and full_indices must be given together"):
        sparse_attn.block_sparse_attention(q, k, v, mask)


def test_full_block_not_fully_visible_under_causal():
    q, k, v = inputs(15)
    t = lambda x: torch.tensor(x, dtype=torch.int32)[None, None]  # noqa: E731
    # Valid split of dense causal: the diagonal block partial, the blocks left of it full.
    counts, indices = t([1, 1, 1, 1]), t([[0], [1], [2], [3]])
    ok = BlockSparseMask(counts, indices, BS, t([0, 1, 2, 3]), t([[9, 9, 9], [0, 9, 9], [0, 1, 9], [0, 1, 2]]))
    out = sparse_attn.block_sparse_attention(q, k, v, ok)
    assert (out.double() - ref.attention(q, k, v, ref.causal_mask(S, S))).abs().max() < 1e-4
    # Row 0 lists its diagonal block 0 as full: part of it is in the future.
    fc0, fi0 = t([1, 1, 2, 3]), t([[0, 9, 9], [0, 9, 9], [0, 1, 9], [0, 1, 2]])
    with pytest.raises(ValueError, match=r"\bfull_indices\[0, 0, 0\] lists key block 0, which is not fully visible"):
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(counts, indices, BS, fc0, fi0))
    # Row 2 lists its diagonal block 2 as full.
    fc2, fi2 = t([0, 1, 3, 3]), t([[9, 9, 9], [0, 9, 9], [0, 1, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match=r"\bfull_indices\[0, 0, 2\] lists key block 2, which is not fully visible"):
        sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(counts, indices, BS, fc2, fi2))
    # Without causality every block is fully visible: the same lists run.
    out_nc = sparse_attn.block_sparse_attention(q, k, v, BlockSparseMask(counts, indices, BS, fc0, fi0),
                                                causal=False)
    want = ref.block_sparse_attention(q, k, v, counts, indices, (BS, BS), full_counts=fc0,
                                      full_indices=fi0, causal=False)
    assert (out_nc.double() - want).abs().max() < 1e-4


@pytest.mark.parametrize("mask", [None, {"counts": 1}, "causal", 3,
                                  torch.tril(torch.ones(1, 1, NBLK, NBLK, dtype=torch.bool))],
                         ids=["None", "dict", "str", "int", "tensor"])
def test_mask_of_wrong_type(mask):
    q, k, v = inputs(16)
    with pytest.raises(ValueError, match=r"\bmask must be a BlockSparseMask or a FlexAttention BlockMask"):
        sparse_attn.block_sparse_attention(q, k, v, mask)


def test_mask_index_dtype():
    good = list_mask(GOOD_COUNTS, GOOD_INDICES)
    with pytest.raises(ValueError, match=r"BlockSparseMask\.counts must be int32"):
        BlockSparseMask(good.counts.long(), good.indices, BS)
    with pytest.raises(ValueError, match=r"BlockSparseMask\.indices must be int32"):
        BlockSparseMask(good.counts, good.indices.to(torch.int16), BS)
    # The op itself checks too (for callers of torch.ops.sparse_attn directly).
    q, k, v = inputs(17)
    out = torch.empty_like(q)
    with pytest.raises(ValueError, match=r"\bindices must be int32"):
        torch.ops.sparse_attn.block_sparse_attention(q, k, v, out, good.counts, good.indices.long(), None, None,
                                                     BS, BS, True, D ** -0.5, True)


# --------------------------------------------------------------------------- FlexAttention BlockMask


def _flex(mask_mod, seqlen=S):
    return create_block_mask(mask_mod, None, None, seqlen, seqlen, device="cpu", BLOCK_SIZE=BS)


def _causal_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def _window_mod(b, h, q_idx, kv_idx):
    return (q_idx >= kv_idx) & (q_idx - kv_idx < 100)


def _all_mod(b, h, q_idx, kv_idx):
    return q_idx >= 0


def test_flex_block_mask_accepted_when_it_matches():
    q, k, v = inputs(18)
    out = sparse_attn.block_sparse_attention(q, k, v, _flex(_causal_mod), causal=True)
    assert (out.double() - ref.attention(q, k, v, ref.causal_mask(S, S))).abs().max() < 1e-4
    out = sparse_attn.block_sparse_attention(q, k, v, _flex(_all_mod), causal=False)
    assert (out.double() - ref.attention(q, k, v)).abs().max() < 1e-4


def test_flex_non_causal_mask_mod_rejected_with_causal():
    q, k, v = inputs(19)
    with pytest.raises(ValueError, match=r"\bmask: the BlockMask's mask_mod is not causal"):
        sparse_attn.block_sparse_attention(q, k, v, _flex(_window_mod), causal=True)


def test_flex_causal_mask_mod_rejected_without_causal():
    q, k, v = inputs(20)
    with pytest.raises(ValueError, match=r"\bmask: the BlockMask's mask_mod is not all-True"):
        sparse_attn.block_sparse_attention(q, k, v, _flex(_causal_mod), causal=False)


def test_flex_all_true_mask_mod_rejected_with_causal():
    # The mask_mod attends the future, the op would not: must not silently differ.
    q, k, v = inputs(21)
    # (Today this is caught by the full-block check, whose message names full_indices.)
    with pytest.raises(ValueError, match=r"mask_mod|full_indices.*not fully visible"):
        sparse_attn.block_sparse_attention(q, k, v, _flex(_all_mod), causal=True)


@pytest.mark.parametrize("seqlen", [192, 320])
def test_flex_other_seq_lengths_rejected(seqlen):
    q, k, v = inputs(22)
    with pytest.raises(ValueError, match=r"\bmask: the BlockMask was built for seq_lengths"):
        sparse_attn.block_sparse_attention(q, k, v, _flex(_causal_mod, seqlen))


# --- added with the review fixes -------------------------------------------------------

def _small(dtype=torch.float32):
    g = torch.Generator().manual_seed(31)
    q = torch.randn(1, 128, 2, 64, generator=g).to(dtype)
    k = torch.randn(1, 128, 1, 64, generator=g).to(dtype)
    v = torch.randn(1, 128, 1, 64, generator=g).to(dtype)
    return q, k, v


def test_out_overlapping_inputs_or_itself_is_rejected():
    q, k, v = _small()
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64)
    with pytest.raises(ValueError, match="out must not share memory"):
        sparse_attn.block_sparse_attention(q, k, v, mask, out=q)
    expanded = torch.zeros(1, 128, 1, 64).expand(1, 128, 2, 64)
    with pytest.raises(ValueError, match="overlapping"):
        sparse_attn.streaming_attention(q, k, v, sink_tokens=4, window_tokens=16, out=expanded)


def test_flex_full_blocks_crossing_diagonal_rejected_even_without_validation():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = _small()
    bm = create_block_mask(lambda b, h, qi, ki: qi >= 0, None, None, 128, 128, device="cpu", BLOCK_SIZE=64)
    with pytest.raises(ValueError, match="mask_mod"):
        sparse_attn.block_sparse_attention(q, k, v, bm, causal=True, validate=False)


def test_flex_head_dependent_mask_mod_rejected_for_broadcast_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = _small()

    def mod(b, h, qi, ki):  # causal on head 0, a 16-token window on head 1
        return (qi >= ki) & ((h == 0) | (qi - ki < 16))

    bm = create_block_mask(mod, None, None, 128, 128, device="cpu", BLOCK_SIZE=64)
    with pytest.raises(ValueError, match="mask_mod"):
        sparse_attn.block_sparse_attention(q, k, v, bm)


def test_release_workspace_then_run_again():
    from sparse_attn import _C

    q, k, v = _small(torch.bfloat16)
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64)
    a = sparse_attn.block_sparse_attention(q, k, v, mask)
    _C.release_workspace()
    b = sparse_attn.block_sparse_attention(q, k, v, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
