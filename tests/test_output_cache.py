"""The CPU output cache behind prefill ops called without ``out=`` (csrc/cpu/output_cache.h):
a dropped output's buffer is reused, a live one never is, and results stay exact."""
import gc
import os
import subprocess
import sys

import torch

import sparse_attn
from sparse_attn import _C
from sparse_attn import reference as ref

from conftest import assert_close_2x, qkv, same_precision_attention

# 2 x 1024 x 4 x 64 float32 = 2 MiB per output: above the 1 MiB the cache starts at.
SHAPE = (2, 1024, 1024, 4, 2, 64)


def _streaming(q, k, v):
    return sparse_attn.streaming_attention(q, k, v, sink_tokens=16, window_tokens=128)


def test_live_outputs_never_share_memory_and_results_stay_exact():
    q, k, v = qkv(*SHAPE, torch.float32, seed=3)
    mask = ref.streaming_dense_mask(q.shape[1], k.shape[1], 16, 128)
    out_ref = ref.streaming_attention(q, k, v, sink_tokens=16, window_tokens=128)
    out_pt = same_precision_attention(q, k, v, mask)
    live = [_streaming(q, k, v) for _ in range(3)]
    assert len({t.data_ptr() for t in live}) == 3  # three live outputs, three buffers
    for t in live:
        assert t.is_contiguous() and t.shape == q.shape and t.dtype == q.dtype
        assert_close_2x(t, out_ref, out_pt, torch.float32, "live output")
    # Writing one must not change the others.
    live[0].fill_(float("nan"))
    assert not live[1].isnan().any() and not live[2].isnan().any()


def test_dropped_output_buffer_is_reused_and_overwritten():
    _C.release_workspace()
    assert _C.output_cache_bytes() == 0
    q, k, v = qkv(*SHAPE, torch.float32, seed=4)
    a = _streaming(q, k, v)
    expected = a.clone()
    ptr, nbytes = a.data_ptr(), a.numel() * a.element_size()
    a.fill_(float("nan"))  # stale contents the next call must overwrite completely
    del a
    gc.collect()
    assert _C.output_cache_bytes() == nbytes
    b = _streaming(q, k, v)
    assert b.data_ptr() == ptr  # the same memory, already mapped
    assert _C.output_cache_bytes() == 0
    torch.testing.assert_close(b, expected, rtol=0, atol=0)
    # An output of another size does not take it.
    del b
    q2, k2, v2 = qkv(1, 1536, 1536, 4, 2, 64, torch.float32, seed=5)  # 1.5 MiB
    c = _streaming(q2, k2, v2)
    assert c.data_ptr() != ptr and _C.output_cache_bytes() == nbytes
    _C.release_workspace()
    assert _C.output_cache_bytes() == 0


def test_small_outputs_and_out_argument_bypass_the_cache():
    _C.release_workspace()
    q, k, v = qkv(1, 64, 64, 2, 1, 64, torch.float32, seed=6)  # 32 KB
    small = _streaming(q, k, v)
    del small
    assert _C.output_cache_bytes() == 0
    q, k, v = qkv(*SHAPE, torch.float32, seed=7)
    out = torch.empty_like(q)
    assert sparse_attn.streaming_attention(q, k, v, sink_tokens=16, window_tokens=128, out=out) is out
    del out
    assert _C.output_cache_bytes() == 0


def test_cache_limit_from_environment():
    code = ("import torch, sparse_attn; from sparse_attn import _C\n"
            "q = torch.randn(2, 1024, 4, 64); k = torch.randn(2, 1024, 2, 64)\n"
            "a = sparse_attn.streaming_attention(q, k, k, sink_tokens=4, window_tokens=64)\n"
            "del a\nprint(_C.output_cache_bytes())\n")
    env = dict(os.environ, SPARSE_ATTN_OUTPUT_CACHE_MB="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"
    env["SPARSE_ATTN_OUTPUT_CACHE_MB"] = "lots"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "SPARSE_ATTN_OUTPUT_CACHE_MB must be a whole number" in res.stderr
