"""The CUDA engine of the paged cache's bookkeeping (csrc/cuda/paged): paged_kv_write (append
and ragged prefill), quest_scores and quest_select on CUDA tensors, against the CPU engine and
the float64 references; quest_decode end to end on a cache filled on the GPU. Skipped without
a CUDA device.

- metadata and pages: bit for bit equal to the CPU engine's after the same operations
  (ragged prefills, appends across page ends, extend, recycled pages, raw writes in any
  order with repeated pages and slots, -0 / NaN / inf keys, strided and unaligned sources);
- scores: within float32 rounding of the float64 bound (and of the CPU engine), -inf past
  each sequence, GQA groups 1 to 128 (a group's queries over 48 KiB of shared memory),
  float32 caches on the 16-byte and the element path, +-inf / NaN metadata by quest_bound's
  rule (paged.h), and the CPU op's result with no query heads or no channels;
- selection: equal to the CPU op's for the same scores (both take the smallest keys of the
  shared select_key, so there are no ties to allow), and a valid Quest selection up to
  near-ties of the float64 bounds for scores computed on the GPU;
- quest_decode: against reference.py with flash-attention's 2x rule;
- bad input: ValueError naming the argument, nothing written.
"""
import copy

import pytest
import torch

from sparse_attn import _C
from sparse_attn import reference as ref
from sparse_attn.paged import PagedKVCache, paged_decode_attention, quest_decode, quest_scores, select_pages

from conftest import CUDA_OK, assert_close_2x, assert_lse_close, same_precision_decode
from test_paged import (ZERO_SIZES, check_metadata, check_scores_by_rule, check_selection, magnitude,
                        put_special_metadata, zero_size_scores, zero_size_write)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (CUDA_OK and getattr(_C, "cuda_compiled", False)),
                       reason="no CUDA device (or the CUDA engine not built)"),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ops = torch.ops.sparse_attn


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rand(shape, dtype, g, offset=None):
    x = torch.randn(shape, generator=g)
    return (x if offset is None else x + offset).to(dtype)


def twins(B, max_pages, ps, Hkv, D, dtype, spare=3):
    """The same empty cache on the CPU and on the GPU."""
    kw = dict(batch_size=B, max_pages_per_seq=max_pages, dtype=dtype)
    return (PagedKVCache(B * max_pages + spare, ps, Hkv, D, **kw),
            PagedKVCache(B * max_pages + spare, ps, Hkv, D, device="cuda", **kw))


def bits(t):
    """The tensor's bit pattern (so NaN == NaN and -0 != +0), on the CPU."""
    t = t.detach().cpu().contiguous()
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_same_state(cc, gc, what):
    for name in ("page_table", "seqlens", "k_pages", "v_pages", "k_max", "k_min"):
        assert torch.equal(bits(getattr(gc, name)), bits(getattr(cc, name))), f"{what}: {name} differs"
    assert gc._owned == cc._owned and gc._free == cc._free, f"{what}: page bookkeeping differs"


def to_cpu(cache):
    """A CPU copy of a (GPU) cache: same tensors, same bookkeeping."""
    num_pages, ps, Hkv, D = cache.k_pages.shape
    c = PagedKVCache(num_pages, ps, Hkv, D, batch_size=cache.batch_size, max_pages_per_seq=cache.page_table.shape[1],
                     dtype=cache.k_pages.dtype)
    for name in ("k_pages", "v_pages", "k_max", "k_min", "page_table", "seqlens"):
        getattr(c, name).copy_(getattr(cache, name))
    c._owned, c._free = copy.deepcopy(cache._owned), copy.deepcopy(cache._free)
    return c


# --------------------------------------------------------------------------- paged_kv_write


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ps", [8, 16, 64])
@pytest.mark.parametrize("D", [128, 64, 40, 36])  # 36: bf16/fp16 rows of 72 bytes, element accesses
def test_cache_operations_equal_cpu_engine(dtype, ps, D):
    lens = [27, 61, 113, 482, 1110, 2047]
    B, Hkv = len(lens), 2
    g = gen(ps + D)
    appends = ps + 2  # every sequence crosses a page end
    max_pages = -(-(max(lens) + appends + 9) // ps)
    cc, gc = twins(B, max_pages, ps, Hkv, D, dtype)
    k, v = rand((B, max(lens), Hkv, D), dtype, g), rand((B, max(lens), Hkv, D), dtype, g)
    cc.prefill(k, v, torch.tensor(lens))
    gc.prefill(k.cuda(), v.cuda(), torch.tensor(lens))
    assert_same_state(cc, gc, "prefill")
    check_metadata(to_cpu(gc), "GPU prefill")
    for step in range(appends):
        kn, vn = rand((B, Hkv, D), dtype, g), rand((B, Hkv, D), dtype, g)
        cc.append(kn, vn)
        gc.append(kn.cuda(), vn.cuda())
        if step in (0, appends // 2, appends - 1):
            assert_same_state(cc, gc, f"append {step}")
    check_metadata(to_cpu(gc), "GPU appends")
    # ragged chunk (extend), then pages recycled by a second prefill and by free + append
    kx = rand((B, 9, Hkv, D), dtype, g, offset=1.5)
    spans = [(0, 9), (3, 9), (9, 9), (0, 1), (2, 7), (0, 9)]
    cc.extend(kx, -kx, spans)
    gc.extend(kx.cuda(), -kx.cuda(), spans)
    assert_same_state(cc, gc, "extend")
    k2 = rand((B, max(lens), Hkv, D), dtype, g, offset=2.0)
    cc.prefill(k2, v, torch.tensor(lens[::-1]))
    gc.prefill(k2.cuda(), v.cuda(), torch.tensor(lens[::-1]))
    cc.free(2)
    gc.free(2)
    kn = rand((B, Hkv, D), dtype, g, offset=-5.0)
    cc.append(kn, kn)
    gc.append(kn.cuda(), kn.cuda())
    assert_same_state(cc, gc, "re-prefill, free, append")
    check_metadata(to_cpu(gc), "GPU after recycling")


def special_keys(shape, dtype, g):
    """Random keys with -0, +0, NaN, +-inf and repeated values sprinkled in."""
    x = torch.randn(shape, generator=g)
    pick = torch.randint(0, 12, shape, generator=g)
    for code, val in ((0, 0.0), (1, -0.0), (2, float("nan")), (3, float("inf")), (4, float("-inf")), (5, 1.0)):
        x[pick == code] = val
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("source", ["contiguous", "padded", "unaligned"])
def test_raw_write_any_order_equals_cpu_engine(dtype, source):
    """paged_kv_write with page ids in any order, pages in several stretches, repeated
    (page, slot) pairs (the last write wins) and special values: bit for bit the CPU op."""
    num_pages, ps, Hkv, D, N = 9, 16, 3, 64, 300
    g = gen(len(source))
    cc, gc = twins(1, num_pages, ps, Hkv, D, dtype, spare=0)
    for c in (cc, gc):  # stale contents the write must fold into or replace
        for name in ("k_max", "k_min"):
            getattr(c, name).copy_(special_keys(tuple(c.k_max.shape), dtype, gen(7)))
    ids = torch.randint(0, num_pages, (N,), generator=g, dtype=torch.int32)
    slots = torch.randint(0, ps, (N,), generator=g, dtype=torch.int32)
    ids[:40] = 4  # a long stretch of one page, slots in any order
    if source == "padded":  # head stride D + 8, last dim contiguous
        k, v = (special_keys((N, Hkv, D + 8), dtype, g)[..., :D] for _ in range(2))
    elif source == "unaligned":  # storage offset of one element: element accesses
        k, v = (special_keys((N * Hkv * D + 1,), dtype, g)[1:].view(N, Hkv, D) for _ in range(2))
    else:
        k, v = special_keys((N, Hkv, D), dtype, g), special_keys((N, Hkv, D), dtype, g)
    ops.paged_kv_write(cc.k_pages, cc.v_pages, cc.k_max, cc.k_min, k, v, ids, slots)
    kd, vd = k.cuda(), v.cuda()
    if source == "unaligned":  # keep the offset on the device too
        kd = torch.cat([torch.zeros(1, dtype=dtype), k.reshape(-1)]).cuda()[1:].view(N, Hkv, D)
        vd = torch.cat([torch.zeros(1, dtype=dtype), v.reshape(-1)]).cuda()[1:].view(N, Hkv, D)
    elif source == "padded":
        kd, vd = (torch.nn.functional.pad(x, (0, 8)).cuda()[..., :D] for x in (k, v))
    ops.paged_kv_write(gc.k_pages, gc.v_pages, gc.k_max, gc.k_min, kd, vd, ids.cuda(), slots.cuda())
    torch.cuda.synchronize()
    for name in ("k_pages", "v_pages", "k_max", "k_min"):
        assert torch.equal(bits(getattr(gc, name)), bits(getattr(cc, name))), f"{source}: {name} differs"


# --------------------------------------------------------------------------- quest_scores

SCORE_CASES = {  # lens, Hq, Hkv, D, page_size
    "gqa4_empty_seq_two_chunks": ([37, 0, 300, 2100], 8, 2, 64, 8),
    "mha_one_token_pages": ([129, 16, 1], 4, 4, 32, 16),
    "group3_d40": ([200, 77], 6, 2, 40, 16),
    "group8_d128": ([1500, 33, 640], 32, 4, 128, 16),
    "group16_d128_ps64": ([3000, 70], 16, 1, 128, 64),
    "group20_d36": ([400, 17], 40, 2, 36, 16),  # two head blocks, element accesses in 16-bit dtypes
    "group128_d128_smem64k": ([300, 45], 128, 1, 128, 16),  # 64 KiB of queries: the opt-in above 48 KiB
}


def gpu_cache(lens, Hkv, D, dtype, ps, seed, offset=True):
    """A GPU cache filled through the CUDA ops (offset: keys with a per-channel shift, so
    many pages have channels of one sign) and its CPU copy."""
    g = gen(seed)
    max_pages = -(-max(lens) // ps) + 2
    _, gc = twins(len(lens), max_pages, ps, Hkv, D, dtype)
    off = torch.rand(Hkv, D, generator=g) * 6 - 3 if offset else None
    S = max(max(lens), 1)
    k, v = rand((len(lens), S, Hkv, D), dtype, g, off), rand((len(lens), S, Hkv, D), dtype, g)
    gc.prefill(k.cuda(), v.cuda(), torch.tensor(lens))
    return gc, to_cpu(gc), g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(SCORE_CASES))
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_scores_match_reference_and_cpu_engine(dtype, case, group_reduce):
    lens, Hq, Hkv, D, ps = SCORE_CASES[case]
    gc, cc, g = gpu_cache(lens, Hkv, D, dtype, ps, seed=len(case) + D)
    q = rand((len(lens), Hq, D), dtype, g)
    s = quest_scores(q.cuda(), gc, group_reduce=group_reduce)
    assert s.is_cuda and s.dtype == torch.float32 and s.shape == (len(lens), Hkv, gc.page_table.shape[1])
    s = s.cpu()
    r = ref.quest_page_bounds(q, cc.k_pages, cc.page_table, cc.seqlens, group_reduce=group_reduce)
    mag = magnitude(q, cc, group_reduce)
    inf = torch.isinf(r)
    assert torch.equal(torch.isinf(s), inf) and (s[inf] == float("-inf")).all(), f"{case}: -inf pattern"
    tol = 1e-5 * mag[~inf]
    err = (s.double() - r).abs()[~inf]
    assert (err <= tol).all(), f"{case}: error {(err / tol).max().item():.3g} x tolerance (float64 reference)"
    cpu = quest_scores(q, cc, group_reduce=group_reduce)
    assert ((s.double() - cpu.double()).abs()[~inf] <= 2 * tol).all(), f"{case}: differs from the CPU engine"


def test_scores_take_any_query_layout_and_dtype():
    """q as a strided view, and q in float32 over a bf16 cache: the same bounds as q contiguous
    in the cache's dtype (the op converts q to float32 either way)."""
    gc, cc, g = gpu_cache([300, 45], 2, 64, torch.bfloat16, 16, seed=3)
    q = rand((2, 8, 64), torch.bfloat16, g)
    want = quest_scores(q.cuda(), gc)
    big = torch.zeros(2, 16, 64, dtype=torch.bfloat16)
    big[:, ::2] = q
    assert torch.equal(quest_scores(big.cuda()[:, ::2], gc), want)
    assert torch.equal(quest_scores(q.float().cuda(), gc), want)


@pytest.mark.parametrize("Hq,Hkv,D", ZERO_SIZES)
@pytest.mark.parametrize("sum_reduce", [False, True])
def test_no_query_heads_or_channels_give_the_cpu_result(Hq, Hkv, D, sum_reduce):
    """No group or no channels to bound (the kernels take no empty grid): the CPU op's result,
    and a write with no KV heads or channels is a no-op, as on the CPU."""
    s = zero_size_scores(Hq, Hkv, D, sum_reduce, "cuda")
    assert s.is_cuda and torch.equal(s.cpu(), zero_size_scores(Hq, Hkv, D, sum_reduce))
    zero_size_write(0, 16, "cuda")
    zero_size_write(2, 0, "cuda")
    torch.cuda.synchronize()


@pytest.mark.parametrize("D", [64, 34])
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_scores_float32_cache_vector_and_element_paths(D, group_reduce):
    """A float32 cache: 16-byte slices of 4 channels (head_dim 64, metadata aligned) and element
    accesses (head_dim 34, or the metadata copied to an odd offset), q in float32 or bf16:
    within float32 rounding of the float64 bound."""
    lens, Hq, Hkv, ps = [300, 45, 0], 8, 2, 16
    gc, cc, g = gpu_cache(lens, Hkv, D, torch.float32, ps, seed=D)
    odd = []
    for t in (gc.k_max, gc.k_min):  # same values at an offset of one element: not 16-byte aligned
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
        odd.append(buf[1:].view_as(t).copy_(t))
    for q_dtype in (torch.float32, torch.bfloat16):
        q = rand((len(lens), Hq, D), q_dtype, g)
        r = ref.quest_page_bounds(q, cc.k_pages, cc.page_table, cc.seqlens, group_reduce=group_reduce)
        inf = torch.isinf(r)
        tol = 1e-5 * magnitude(q, cc, group_reduce)[~inf]
        for mx, mn in ((gc.k_max, gc.k_min), tuple(odd)):
            s = ops.quest_scores(q.cuda(), mx, mn, gc.page_table, gc.seqlens, ps, group_reduce == "sum").cpu()
            what = f"D={D} q {q_dtype} metadata at offset {mx.storage_offset()}"
            assert torch.equal(torch.isinf(s), inf) and (s[inf] == float("-inf")).all(), f"{what}: -inf pattern"
            err = (s.double() - r).abs()[~inf]
            assert (err <= tol).all(), f"{what}: error {(err / tol).max().item():.3g} x tolerance"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("Hq,Hkv,D", [(8, 2, 64), (6, 2, 36), (40, 2, 64)])
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_scores_rule_with_infinite_and_nan_metadata(dtype, Hq, Hkv, D, group_reduce):
    """quest_bound's rule (paged.h) on the GPU, as test_paged.py checks it on the CPU: +-inf and
    NaN metadata where q is 0 (ignored) and where it is not (inf or NaN bounds): the rule's
    NaN / +-inf entries and values, and the CPU engine's."""
    lens, ps = [70, 33, 0, 130], 16
    gc, cc, g = gpu_cache(lens, Hkv, D, dtype, ps, seed=Hq + D)
    q = put_special_metadata(cc, rand((len(lens), Hq, D), dtype, g))
    gc.k_max.copy_(cc.k_max)
    gc.k_min.copy_(cc.k_min)
    s = quest_scores(q.cuda(), gc, group_reduce=group_reduce)
    what = f"{dtype} G={Hq // Hkv} D={D}"
    check_scores_by_rule(s, q, cc, group_reduce, what)
    check_scores_by_rule(quest_scores(q, cc, group_reduce=group_reduce), q, cc, group_reduce, what + " (CPU)")


# --------------------------------------------------------------------------- quest_select


@pytest.mark.parametrize("budget,sink,recent", [(256, 1, 1), (100, 0, 3), (16, 2, 2), (64, 0, 0), (1, 1, 0),
                                                (40, 4, 1), (10**6, 1, 1)])
def test_selection_equals_cpu_engine_for_the_same_scores(budget, sink, recent):
    """Hand-made scores full of ties, NaN, +-inf and -0: the GPU op's pages and counts are the
    CPU op's exactly (both take the smallest select_key values)."""
    lens = [0, 5, 129, 700, 1500, 33]
    cc = PagedKVCache(len(lens) * 100, 16, 3, 16, batch_size=len(lens), max_pages_per_seq=-(-max(lens) // 16) + 2,
                      dtype=torch.float32)
    cc.prefill(torch.randn(len(lens), max(lens), 3, 16), torch.randn(len(lens), max(lens), 3, 16), torch.tensor(lens))
    g = gen(budget + sink)
    P = cc.page_table.shape[1]
    scores = torch.randint(-2, 3, (len(lens), 3, P), generator=g).float()
    pick = torch.randint(0, 10, scores.shape, generator=g)
    for code, val in ((0, float("nan")), (1, float("inf")), (2, float("-inf")), (3, -0.0)):
        scores[pick == code] = val
    want = ops.quest_select(scores, cc.seqlens, 16, budget, sink, recent)
    got = ops.quest_select(scores.cuda(), cc.seqlens.cuda(), 16, budget, sink, recent)
    assert got[0].is_cuda and got[0].dtype == torch.int32 and got[1].dtype == torch.int32
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("budget,sink,recent", [(256, 1, 1), (64, 2, 3), (10**6, 1, 1)])
def test_selection_of_gpu_scores_is_a_quest_selection(dtype, budget, sink, recent):
    lens = [0, 5, 129, 700, 1500]
    gc, cc, g = gpu_cache(lens, 2, 64, dtype, 16, seed=budget + sink)
    q = rand((len(lens), 8, 64), dtype, g)
    s = quest_scores(q.cuda(), gc)
    pages, counts = select_pages(s, gc, token_budget=budget, sink_pages=sink, recent_pages=recent)
    assert pages.is_cuda and counts.is_cuda
    r = ref.quest_page_bounds(q, cc.k_pages, cc.page_table, cc.seqlens)
    check_selection(s.cpu(), cc, pages.cpu(), counts.cpu(), budget, sink, recent, r, magnitude(q, cc, "max"))


# --------------------------------------------------------------------------- quest_decode


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("Hq,Hkv,D,ps", [(8, 2, 64, 16), (32, 8, 128, 16), (4, 4, 128, 64), (12, 1, 64, 16)])
@pytest.mark.parametrize("group_reduce", ["max", "sum"])
def test_quest_decode_end_to_end(dtype, Hq, Hkv, D, ps, group_reduce):
    """Cache filled on the GPU (prefill + extends), one quest_decode step on the GPU: against
    the float64 reference over the pages the GPU selected (2x rule), equal to its own steps,
    and the selection a valid Quest selection of the float64 bounds up to near-ties."""
    lens = [900, 45, 0, 257, 1]
    gc, _, g = gpu_cache(lens, Hkv, D, dtype, ps, seed=Hq + D + ps)
    for _ in range(3):  # decode-step writes, sequence 2 kept empty
        kn, vn = rand((len(lens), 1, Hkv, D), dtype, g).cuda(), rand((len(lens), 1, Hkv, D), dtype, g).cuda()
        gc.extend(kn, vn, [(0, 1), (0, 1), (0, 0), (0, 1), (0, 1)])
    cc = to_cpu(gc)
    check_metadata(cc, "GPU-filled cache")
    q = rand((len(lens), Hq, D), dtype, g)
    qd, budget = q.cuda(), 4 * ps + 7
    out = torch.full_like(qd, float("nan"))
    res, lse = quest_decode(qd, gc, token_budget=budget, group_reduce=group_reduce, scale=0.3, return_lse=True,
                            out=out)
    assert res is out
    s = quest_scores(qd, gc, group_reduce=group_reduce)
    pages, counts = select_pages(s, gc, token_budget=budget)
    want, want_lse = paged_decode_attention(qd, gc, pages=pages, counts=counts, scale=0.3, return_lse=True)
    torch.cuda.synchronize()
    assert torch.equal(out, want) and torch.equal(lse, want_lse), "quest_decode differs from its steps"
    pages, counts, out, lse = pages.cpu(), counts.cpu(), out.cpu(), lse.cpu()
    out_ref, lse_ref = ref.paged_decode_attention(q, cc.k_pages, cc.v_pages, cc.page_table, cc.seqlens, pages=pages,
                                                  counts=counts, scale=0.3, return_lse=True)
    assert_close_2x(out, out_ref, same_precision_decode(q, cc, pages, counts, scale=0.3), dtype, "quest_decode")
    assert_lse_close(lse, lse_ref, "quest_decode")
    assert (out[2] == 0).all() and torch.isinf(lse[2]).all()  # the empty sequence
    r = ref.quest_page_bounds(q, cc.k_pages, cc.page_table, cc.seqlens, group_reduce=group_reduce)
    check_selection(s.cpu(), cc, pages, counts, budget, 1, 1, r, magnitude(q, cc, group_reduce))


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_error_and_writes_nothing():
    _, gc = twins(2, 4, 16, 2, 64, torch.bfloat16, spare=-2)  # 6 pages
    g = gen(1)
    gc.prefill(rand((2, 40, 2, 64), torch.bfloat16, g).cuda(), rand((2, 40, 2, 64), torch.bfloat16, g).cuda(),
               torch.tensor([40, 30]))
    snap = lambda: [bits(t) for t in (gc.k_pages, gc.v_pages, gc.k_max, gc.k_min)]  # noqa: E731
    before = snap()
    k = rand((3, 2, 64), torch.bfloat16, g).cuda()
    ids, slots = torch.tensor([0, 1, 2], dtype=torch.int32).cuda(), torch.tensor([0, 1, 2], dtype=torch.int32).cuda()
    write = lambda *a: ops.paged_kv_write(gc.k_pages, gc.v_pages, gc.k_max, gc.k_min, *a)  # noqa: E731
    with pytest.raises(ValueError, match=r"page_ids\[1\]"):
        write(k, k, torch.tensor([0, 6, 2], dtype=torch.int32).cuda(), slots)
    with pytest.raises(ValueError, match=r"slots\[2\]"):
        write(k, k, ids, torch.tensor([0, 1, 16], dtype=torch.int32).cuda())
    with pytest.raises(ValueError, match="k must have the cache's dtype"):
        write(k.float(), k.float(), ids, slots)
    with pytest.raises(ValueError, match="must be on"):
        write(k.cpu(), k, ids, slots)
    with pytest.raises(ValueError, match="page_ids and slots must be contiguous"):
        write(k, k, torch.tensor([0, 9, 1, 9, 2, 9], dtype=torch.int32).cuda()[::2], slots)
    with pytest.raises(ValueError, match="page pool is full"):  # 5 of 6 pages in use, 3 more needed
        gc.extend(rand((2, 40, 2, 64), torch.bfloat16, g).cuda(), rand((2, 40, 2, 64), torch.bfloat16, g).cuda(),
                  [(0, 20), (0, 20)])
    after = snap()
    assert all(torch.equal(a, b) for a, b in zip(before, after)), "a rejected call wrote to the cache"

    q = rand((2, 8, 64), torch.bfloat16, g).cuda()
    table = gc.page_table.clone()
    table[1, 1] = 99
    with pytest.raises(ValueError, match=r"page_table\[1, 1\]"):
        ops.quest_scores(q, gc.k_max, gc.k_min, table, gc.seqlens, 16, False)
    with pytest.raises(ValueError, match=r"seqlens\[0\]"):
        ops.quest_scores(q, gc.k_max, gc.k_min, gc.page_table, torch.tensor([65, 30], dtype=torch.int32).cuda(), 16,
                         False)
    with pytest.raises(ValueError, match="q must be"):
        quest_scores(q[:, :3], gc)
    with pytest.raises(ValueError, match="must be on"):
        ops.quest_scores(q, gc.k_max, gc.k_min, gc.page_table.cpu(), gc.seqlens, 16, False)
    s = quest_scores(q, gc)
    with pytest.raises(ValueError, match="scores must be float32"):
        ops.quest_select(s.double(), gc.seqlens, 16, 32, 1, 1)
    with pytest.raises(ValueError, match=r"seqlens\[0\]"):
        ops.quest_select(s[..., :2].contiguous(), gc.seqlens, 16, 32, 1, 1)
    with pytest.raises(ValueError, match="token_budget"):
        ops.quest_select(s, gc.seqlens, 16, 0, 1, 1)
    with pytest.raises(ValueError, match="must be on"):
        ops.quest_select(s, gc.seqlens.cpu(), 16, 32, 1, 1)


def test_smoke_paged_ops_for_sanitizers():
    """Small and quick, for compute-sanitizer (bench/gpu_check.sh runs -k smoke): prefill,
    appends, a raw write with repeated pages, scores and selection, against the CPU engine."""
    lens, Hkv, D, ps = [40, 150, 3], 2, 64, 16
    g = gen(2)
    cc, gc = twins(3, 12, ps, Hkv, D, torch.bfloat16)
    k, v = rand((3, 150, Hkv, D), torch.bfloat16, g), rand((3, 150, Hkv, D), torch.bfloat16, g)
    cc.prefill(k, v, torch.tensor(lens))
    gc.prefill(k.cuda(), v.cuda(), torch.tensor(lens))
    for _ in range(2):
        kn = rand((3, Hkv, D), torch.bfloat16, g)
        cc.append(kn, -kn)
        gc.append(kn.cuda(), -kn.cuda())
    ids, slots = torch.tensor([5, 1, 5, 5], dtype=torch.int32), torch.tensor([3, 0, 3, 9], dtype=torch.int32)
    kr = rand((4, Hkv, D), torch.bfloat16, g)
    ops.paged_kv_write(cc.k_pages, cc.v_pages, cc.k_max, cc.k_min, kr, kr, ids, slots)
    ops.paged_kv_write(gc.k_pages, gc.v_pages, gc.k_max, gc.k_min, kr.cuda(), kr.cuda(), ids.cuda(), slots.cuda())
    assert_same_state(cc, gc, "smoke")
    q = rand((3, 8, D), torch.bfloat16, g)
    s = quest_scores(q.cuda(), gc)
    pages, counts = select_pages(s, gc, token_budget=40)
    want = select_pages(s.cpu(), cc, token_budget=40)
    assert torch.equal(pages.cpu(), want[0]) and torch.equal(counts.cpu(), want[1])
