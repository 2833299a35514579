"""pytest-benchmark timings of the prefill op against dense SDPA on a 2048-token case.

Run with ``pytest bench/ --benchmark-only`` (not part of ``pytest tests/``: testpaths is
tests/). The full suite with the compiled flex_attention baseline, JSON and plots is
``sparse-attn bench`` / ``python -m sparse_attn.benchmark``.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")
sparse_attn = pytest.importorskip("sparse_attn")
if not hasattr(sparse_attn, "block_sparse_attention"):
    pytest.skip("sparse_attn ops not built", allow_module_level=True)

from sparse_attn.benchmark.prefill import random_block_map  # noqa: E402

S, HQ, HKV, D = 2048, 32, 8, 128
INPUT_SETS = 3


def _inputs(dtype):
    g = torch.Generator().manual_seed(1234)
    return [tuple(torch.randn(1, S, h, D, generator=g, dtype=dtype) for h in (HQ, HKV, HKV))
            for _ in range(INPUT_SETS)]


def _rotating(inputs):
    """pedantic() setup: each round gets the next input set, so caches do not flatter."""
    state = {"i": 0}

    def setup():
        args = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return args, {}

    return setup


def _run(benchmark, fn, inputs):
    benchmark.pedantic(fn, setup=_rotating(inputs), rounds=5, warmup_rounds=1, iterations=1)


DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float32, id="fp32")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_dense_causal(benchmark, dtype):
    inputs = [tuple(x.transpose(1, 2) for x in qkv) for qkv in _inputs(dtype)]
    benchmark.group = f"prefill S={S} {str(dtype).removeprefix('torch.')}"
    _run(benchmark, lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True), inputs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [64, 128])
def test_block_sparse_25pct(benchmark, dtype, block):
    mask = sparse_attn.BlockSparseMask.from_dense(
        random_block_map(S, S, HQ, block, 0.25, torch.Generator().manual_seed(0)), (block, block))
    benchmark.group = f"prefill S={S} {str(dtype).removeprefix('torch.')}"
    benchmark.extra_info["density"] = mask.density(S, S, causal=True)
    _run(benchmark, lambda q, k, v: sparse_attn.block_sparse_attention(q, k, v, mask, causal=True),
         _inputs(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_streaming_128_1024(benchmark, dtype):
    benchmark.group = f"prefill S={S} {str(dtype).removeprefix('torch.')}"
    _run(benchmark, lambda q, k, v: sparse_attn.streaming_attention(
        q, k, v, sink_tokens=128, window_tokens=1024), _inputs(dtype))
