"""pytest-benchmark timings of vertical-slash prefill (estimator, index conversion, kernel) and
dense SDPA on a 2048-token case with the ``structured`` inputs of the benchmark suite.

Run with ``pytest bench/ --benchmark-only`` (not part of ``pytest tests/``: testpaths is
tests/). The full suite (16k and 32k tokens, JSON) is
``python -m sparse_attn.benchmark --op vertical_slash``.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")
pytest.importorskip("sparse_attn")
try:
    from sparse_attn.vertical_slash import vertical_slash_attention, vertical_slash_index
    from sparse_attn.vertical_slash_estimator import estimate_vertical_slash
except Exception as e:  # extension not built, or an older build without the ops
    pytest.skip(f"sparse_attn vertical-slash ops not importable: {e}", allow_module_level=True)

from sparse_attn.benchmark.vertical_slash import VerticalSlashConfig, make_inputs  # noqa: E402

S = 2048
BUDGETS = [pytest.param((128, 512), id="v128-s512"), pytest.param((500, 1000), id="v500-s1000")]
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float32, id="fp32")]
_CACHE = {}


def _inputs(dtype):
    """The suite's ``structured`` q, k, v (RoPE + sink), one set: estimator and kernel read the same."""
    if dtype not in _CACHE:
        _CACHE[dtype] = make_inputs(VerticalSlashConfig(), S, dtype, "structured", seed=1234)
    return _CACHE[dtype]


def _run(benchmark, fn, *args):
    benchmark.pedantic(fn, args=args, rounds=5, warmup_rounds=1, iterations=1)


def _group(benchmark, dtype):
    benchmark.group = f"vertical_slash S={S} {str(dtype).removeprefix('torch.')}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_dense_causal(benchmark, dtype):
    q, k, v = (x.transpose(1, 2) for x in _inputs(dtype))
    _group(benchmark, dtype)
    _run(benchmark, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
         q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", BUDGETS)
def test_estimator(benchmark, dtype, budget):
    q, k, _ = _inputs(dtype)
    nv, ns = budget
    _group(benchmark, dtype)
    _run(benchmark, lambda q, k: estimate_vertical_slash(q, k, n_vertical=nv, n_slash=ns), q, k)


@pytest.mark.parametrize("budget", BUDGETS)
def test_index_conversion(benchmark, budget):
    q, k, _ = _inputs(torch.bfloat16)
    vertical, slash = estimate_vertical_slash(q, k, n_vertical=budget[0], n_slash=budget[1])
    benchmark.group = f"vertical_slash S={S} index"
    _run(benchmark, lambda a, b: vertical_slash_index(a, b, seqlen_q=S, seqlen_k=S, block_size=64),
         vertical, slash)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("budget", BUDGETS)
def test_kernel(benchmark, dtype, budget):
    q, k, v = _inputs(dtype)
    vertical, slash = estimate_vertical_slash(q, k, n_vertical=budget[0], n_slash=budget[1])
    out = torch.zeros_like(q)  # preallocated: no page faults of a fresh output in the timing
    _group(benchmark, dtype)
    _run(benchmark, lambda q, k, v: vertical_slash_attention(q, k, v, vertical, slash, causal=True, out=out),
         q, k, v)
