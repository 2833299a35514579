"""streaming_attention (sink + window) against the float64 reference."""
import pytest
import torch

import sparse_attn
from sparse_attn import reference as ref

from conftest import (DEVICES, assert_close_2x, assert_lse_close, poisoned_like, qkv,
                      same_precision_attention, skip_if_no_engine)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,Sq,Sk,Hq,Hkv,D", [(2, 300, 300, 4, 2, 64), (1, 130, 401, 2, 1, 128),
                                             (1, 250, 180, 2, 2, 64)])  # Sq > Sk
@pytest.mark.parametrize("sink,window", [(4, 64), (0, 100), (37, 1), (128, 2048), (0, 0), (5, 0), (300, 7)])
def test_streaming_matches_reference(device, dtype, B, Sq, Sk, Hq, Hkv, D, sink, window):
    skip_if_no_engine(device)
    q, k, v = qkv(B, Sq, Sk, Hq, Hkv, D, dtype, device, seed=sink * 7 + window)
    out = poisoned_like(q)
    res, lse = sparse_attn.streaming_attention(q, k, v, sink_tokens=sink, window_tokens=window,
                                               return_lse=True, out=out)
    assert res is out
    out_ref, lse_ref = ref.streaming_attention(q.cpu(), k.cpu(), v.cpu(), sink_tokens=sink,
                                               window_tokens=window, return_lse=True)
    mask = ref.streaming_dense_mask(Sq, Sk, sink, window)
    out_pt = same_precision_attention(q.cpu(), k.cpu(), v.cpu(), mask)
    what = f"sink={sink} window={window} {Sq}x{Sk}"
    assert_close_2x(out.cpu(), out_ref, out_pt, dtype, what)
    assert_lse_close(lse.cpu(), lse_ref, what)


def test_window_covering_everything_equals_causal_block_sparse():
    q, k, v = qkv(1, 200, 200, 2, 1, 64, torch.float32, seed=1)
    a = sparse_attn.streaming_attention(q, k, v, sink_tokens=0, window_tokens=10**6)
    nb = 4
    mask = sparse_attn.BlockSparseMask.from_dense(torch.ones(1, 1, nb, nb, dtype=torch.bool), 64)
    b = sparse_attn.block_sparse_attention(q, k, v, mask)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
