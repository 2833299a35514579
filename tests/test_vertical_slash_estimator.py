"""estimate_vertical_slash against a slow float64 reference written here.

Top-k ties make index comparison brittle, so a pick is checked by its score: every returned
index must score (in the reference) at least the k-th largest reference score, minus a small
tolerance, with forced sinks / local diagonals counted as +inf.
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import sparse_attn.vertical_slash_estimator as vse
from sparse_attn.vertical_slash_estimator import estimate_vertical_slash

from conftest import qkv

TOL = 1e-4  # float32 sums of <= 64 probabilities vs float64: errors are ~1e-6


def reference_scores(q, k, last_q, scale=None):
    """float64 vertical / slash scores [B, Hq, Sk], one head and one query row at a time."""
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    g = Hq // Hkv
    scale = D ** -0.5 if scale is None else scale
    vert = torch.zeros(B, Hq, Sk, dtype=torch.float64)
    slash = torch.zeros(B, Hq, Sk, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            keys = k[b, :, h // g].double()
            for i in range(max(Sq - last_q, 0), Sq):
                p = i + Sk - Sq                      # key position of query row i
                if p < 0:
                    continue                         # sees no key
                # 16-bit inputs are scored in their dtype from the pre-scaled query (the
                # estimator's documented behaviour): round where it rounds.
                qs = (q[b, i, h].float() * scale).to(q.dtype).double()
                scores = (keys[: p + 1] @ qs).to(q.dtype).double()
                probs = torch.softmax(scores, dim=0)
                j = torch.arange(p + 1)                  # the keys it sees
                vert[b, h].index_add_(0, j, probs)
                slash[b, h].index_add_(0, p - j, probs)  # key j lies on diagonal p - j
    return vert, slash


def check_picks(idx, ref, n, forced, what):
    """idx int32 [B, H, N] returned; ref float64 [B, H, Sk] reference scores."""
    B, H, Sk = ref.shape
    N = min(n, Sk)
    assert idx.dtype == torch.int32 and idx.shape == (B, H, N) and idx.is_contiguous(), what
    assert ((idx >= 0) & (idx < Sk)).all(), f"{what}: index out of range"
    assert (idx[..., 1:] > idx[..., :-1]).all(), f"{what}: not strictly ascending (sorted, unique)"
    nf = min(forced, Sk)
    if nf <= N:
        assert (idx[..., :nf] == torch.arange(nf, dtype=torch.int32)).all(), f"{what}: forced picks missing"
    else:
        assert (idx < nf).all(), f"{what}: fewer slots than forced picks, yet a non-forced pick"
    ref = ref.clone()
    ref[..., :nf] = float("inf")
    kth = ref.topk(N, dim=-1).values[..., -1:]                       # k-th largest reference score
    picked = ref.gather(-1, idx.long())
    low = picked < kth - TOL                                         # (inf >= inf holds)
    assert not low.any(), (f"{what}: picked a score {picked[low].min().item():.4g} below the k-th largest "
                           f"{kth.expand_as(picked)[low][0].item():.4g}")


def run_and_check(q, k, n_vertical, n_slash, last_q=64, sink_tokens=30, local_diagonals=100, scale=None):
    vertical, slash = estimate_vertical_slash(q, k, n_vertical=n_vertical, n_slash=n_slash, last_q=last_q,
                                              sink_tokens=sink_tokens, local_diagonals=local_diagonals,
                                              scale=scale)
    rv, rs = reference_scores(q, k, last_q, scale)
    check_picks(vertical, rv, n_vertical, sink_tokens, "vertical")
    check_picks(slash, rs, n_slash, local_diagonals, "slash")
    return vertical, slash


CASES = [  # B, Sq, Sk, Hq, Hkv, D, last_q
    (2, 200, 333, 4, 2, 64, 64),     # GQA, batch 2, Sq < Sk, ragged
    (1, 333, 333, 6, 1, 32, 64),     # one kv head for six query heads
    (2, 40, 200, 2, 2, 16, 64),      # last_q > Sq
    (1, 150, 100, 2, 1, 16, 64),     # Sq > Sk: early rows see no key
    (1, 257, 257, 3, 3, 16, 1),      # a single scored row
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D,last_q", CASES)
def test_matches_reference(B, Sq, Sk, Hq, Hkv, D, last_q, dtype):
    q, k, _ = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, seed=Sq + Sk + Hq)
    run_and_check(q, k, n_vertical=50, n_slash=70, last_q=last_q, sink_tokens=4, local_diagonals=8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_default_forcing_and_hf_layout(dtype):
    # Default sinks (30) / local diagonals (100), strided [B, H, S, D]-backed views, custom scale.
    q, k, _ = qkv(1, 300, 400, 4, 2, 64, dtype, seed=3, layout="bhsd")
    run_and_check(q, k, n_vertical=64, n_slash=160, scale=0.2)


def test_budgets_larger_than_forced_or_context():
    q, k, _ = qkv(1, 90, 120, 2, 1, 16, torch.float32, seed=5)
    # more forced picks than slots: only forced picks come back
    run_and_check(q, k, n_vertical=10, n_slash=20, sink_tokens=30, local_diagonals=100)
    # budget >= context: every index, in order
    v, s = estimate_vertical_slash(q, k, n_vertical=500, n_slash=121, sink_tokens=0, local_diagonals=0)
    assert torch.equal(v, torch.arange(120, dtype=torch.int32).expand(1, 2, 120))
    assert torch.equal(s, torch.arange(120, dtype=torch.int32).expand(1, 2, 120))


ROW = 64 * 333 * 4  # bytes of one query head's float32 scores below (L = 64, Sk = 333)


@pytest.mark.parametrize("Hq,Hkv,budget,tile", [
    (8, 2, 1, 1),                 # one query head per chunk, one key per matmul
    (8, 2, 3 * ROW, 3000),        # slices of a kv group (3 + 1 heads), uneven key tiles
    (6, 3, 4 * ROW, 10**9),       # two kv groups per chunk, then a leftover group
])
def test_head_chunks_and_key_tiles(monkeypatch, Hq, Hkv, budget, tile):
    monkeypatch.setattr(vse, "_SCORE_BUDGET_BYTES", budget)
    monkeypatch.setattr(vse, "_KEY_TILE_BYTES", tile)
    for dtype in (torch.float32, torch.bfloat16):
        q, k, _ = qkv(2, 200, 333, Hq, Hkv, 64, dtype, seed=11)
        run_and_check(q, k, n_vertical=40, n_slash=60, sink_tokens=3, local_diagonals=5)


def test_planted_vertical_and_slash():
    # One-hot queries/keys: row i attends key i - 5 (diagonal 5) and key 3 (a column) equally,
    # so the single best vertical is key 3 and the single best slash is offset 5.
    S, D, last = 40, 64, 16
    q = torch.zeros(1, S, 1, D)
    k = torch.zeros(1, S, 1, D)
    for i in range(S):
        q[0, i, 0, i] = 8.0
    for j in range(S - 5):
        k[0, j, 0, j + 5] = 8.0
    k[0, 3, 0] = 0.0
    k[0, 3, 0, S - last:S] = 8.0
    v, s = estimate_vertical_slash(q, k, n_vertical=1, n_slash=1, last_q=last, sink_tokens=0, local_diagonals=0)
    assert v.tolist() == [[[3]]] and s.tolist() == [[[5]]]


def test_checker_rejects_wrong_picks():
    # The score check above must be able to fail: the lowest-scoring indices are rejected.
    q, k, _ = qkv(1, 100, 100, 2, 1, 16, torch.float32, seed=7)
    rv, _ = reference_scores(q, k, 64)
    worst = rv.topk(10, dim=-1, largest=False).indices.sort(-1).values.to(torch.int32).contiguous()
    with pytest.raises(AssertionError, match="below the k-th largest"):
        check_picks(worst, rv, 10, 0, "vertical")
    with pytest.raises(AssertionError, match="forced picks missing"):
        check_picks(worst, rv, 10, 2, "vertical")


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_k_is_never_copied(dtype, layout):
    # K (fp32 32 MiB / bf16 16 MiB) dwarfs everything else the call needs. float32: the total
    # of all allocations stays below half of K, so no part of K is copied, not even per tile.
    # 16-bit: keys are up-converted tile by tile; the largest allocation stays below half of K.
    Sk, H, D, last_q = 16384, 4, 128, 16
    q, k, _ = qkv(1, 64, Sk, H, H, D, dtype, seed=1, layout=layout)
    k_bytes = k.numel() * k.element_size()
    estimate_vertical_slash(q, k, n_vertical=100, n_slash=100, last_q=last_q)   # warm-up
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        estimate_vertical_slash(q, k, n_vertical=100, n_slash=100, last_q=last_q)
    allocs = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]
    assert allocs, "the profiler recorded no allocation (score buffer expected)"
    assert max(allocs) < k_bytes / 2, f"an allocation of {max(allocs)} bytes, K is {k_bytes}"
    if dtype == torch.float32:
        assert sum(allocs) < k_bytes / 2, f"{sum(allocs)} bytes allocated in all, K is {k_bytes}"


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_vertical=0), "n_vertical"),
    (dict(n_vertical=True), "n_vertical"),
    (dict(n_vertical=2.0), "n_vertical"),
    (dict(n_slash=-3), "n_slash"),
    (dict(n_slash=False), "n_slash"),
    (dict(last_q=0), "last_q"),
    (dict(last_q=True), "last_q"),
    (dict(sink_tokens=-1), "sink_tokens"),
    (dict(local_diagonals=True), "local_diagonals"),
    (dict(scale="x"), "scale"),
])
def test_bad_arguments(kwargs, match):
    q, k, _ = qkv(1, 16, 16, 2, 1, 16, torch.float32)
    args = dict(n_vertical=4, n_slash=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        estimate_vertical_slash(q, k, **args)


def test_bad_tensors():
    q, k, _ = qkv(1, 16, 16, 4, 2, 16, torch.float32)
    call = lambda q, k: estimate_vertical_slash(q, k, n_vertical=4, n_slash=4)  # noqa: E731
    with pytest.raises(ValueError, match="q must be"):
        call(q[0], k)
    with pytest.raises(ValueError, match="k must be"):
        call(q, k[..., 0])
    with pytest.raises(ValueError, match="k heads"):
        call(q, k.new_zeros(1, 16, 3, 16) + 1)
    with pytest.raises(ValueError, match="batch and head_dim"):
        call(q, torch.cat([k, k]))
    with pytest.raises(ValueError, match="batch and head_dim"):
        call(q, k[..., :8])
    with pytest.raises(ValueError, match="dtypes differ"):
        call(q, k.bfloat16())
    with pytest.raises(ValueError, match="q dtype"):
        call(q.double(), k.double())
    with pytest.raises(ValueError, match="k must have a contiguous last dim"):
        call(q, torch.randn(1, 16, 2, 32)[..., ::2])
    with pytest.raises(ValueError, match="k has an empty"):
        call(q, k[:, :0])
