"""Public prefill attention ops: block-sparse and streaming (sink + window)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ._ops import ops
from .masks import BlockSparseMask

__all__ = ["block_sparse_attention", "streaming_attention"]

# Ops with a CUDA kernel (csrc/cuda/prefill): bfloat16/float16, head_dim 64 or 128.
_CUDA_OPS = ("block_sparse_attention", "streaming_attention", "vertical_slash_attention")


def _check_inputs(q, k, v, out, op: str):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be [batch, seqlen, heads, head_dim], got shape {tuple(t.shape)}")
    if q.device.type not in ("cpu", "cuda") or (q.device.type == "cuda" and op not in _CUDA_OPS):
        raise ValueError(
            f"{op}: q is on {q.device}, but this op only runs on the CPU engine so far; its CUDA "
            f"kernel is not built yet (see the README's status table)"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(f"{op}: inference only, there is no backward; call it under torch.no_grad() "
                         f"or pass tensors that do not require grad")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{op}: out must be a torch.Tensor or None")
        if out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"{op}: out must match q (shape {tuple(q.shape)}, {q.dtype}, {q.device}), got "
                f"shape {tuple(out.shape)}, {out.dtype}, {out.device}"
            )


def _new_out(q: torch.Tensor) -> torch.Tensor:
    """Output buffer when the caller passed none: on the CPU from the output cache
    (``torch.ops.sparse_attn.output_like``), which takes back the buffers of dropped outputs so
    that the next call with the same shape writes into mapped memory. A fresh 64 MB output
    cost ~15 ms of page faults (8k tokens, 32 heads, bf16), as much as the attention itself
    at 10% density. (A huge-page backed buffer halved the faults but made call times erratic:
    with THP defrag on madvise each new 2 MB page may compact memory first.) Capped by
    ``SPARSE_ATTN_OUTPUT_CACHE_MB`` (default 512, 0 turns it off); ``_C.release_workspace()``
    empties it."""
    if q.device.type == "cpu":
        return torch.ops.sparse_attn.output_like(q)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def _scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return float(q.shape[-1] ** -0.5) if scale is None else float(scale)


def _flex_to_mask(block_mask, batch: int, heads: int, seqlen_q: int, seqlen_k: int,
                  causal: bool) -> BlockSparseMask:
    """Converts a FlexAttention BlockMask after checking that its mask_mod is exactly the
    element mask this op applies (causal, bottom-right aligned, or none)."""
    seq = tuple(int(s) for s in block_mask.seq_lengths)
    if seq != (seqlen_q, seqlen_k):
        raise ValueError(
            f"mask: the BlockMask was built for seq_lengths {seq}, but q/k have ({seqlen_q}, {seqlen_k})"
        )
    key = (batch, heads, seqlen_q, seqlen_k, causal)
    if getattr(block_mask, "_sparse_attn_checked", None) != key:
        _check_mask_mod(block_mask, batch, heads, seqlen_q, seqlen_k, causal)
        try:
            block_mask._sparse_attn_checked = key
        except AttributeError:
            pass
    return BlockSparseMask.from_flex(block_mask)


def _listed_blocks(counts, indices, batch, heads):
    """(b, h, m, n) of every listed block, broadcast size-1 batch/head dims expanded."""
    if counts.dim() != 3 or counts.shape[0] not in (1, batch) or counts.shape[1] not in (1, heads):
        raise ValueError(f"mask: BlockMask block counts of shape {tuple(counts.shape)} do not fit "
                         f"batch {batch} x {heads} query heads")
    valid = torch.arange(indices.shape[-1], device=indices.device) < counts[..., None]
    valid = valid.expand(batch, heads, *valid.shape[2:])
    idx = indices.expand(batch, heads, *indices.shape[2:])
    b, h, m, j = torch.nonzero(valid, as_tuple=True)
    return b, h, m, idx[b, h, m, j].long()


def _check_mask_mod(block_mask, batch, heads, seqlen_q, seqlen_k, causal):
    # flex applies mask_mod on the partial blocks and nothing on the full ones, for every
    # (batch, head) of the call; the kernel applies the causal mask (or none) everywhere.
    bq, bk = (int(x) for x in block_mask.BLOCK_SIZE)
    offset = seqlen_k - seqlen_q
    kind = "causal (bottom-right aligned)" if causal else "all-True (no element mask)"
    err = ValueError(
        f"mask: the BlockMask's mask_mod is not {kind} on its partial blocks, or it has full "
        f"blocks that {'cross the diagonal' if causal else 'need a mask'}; only block structure plus "
        f"causal={causal} is supported. Pass causal={not causal} if that matches your mask_mod, "
        f"or use a pure block mask."
    )
    full_c = getattr(block_mask, "full_kv_num_blocks", None)
    if causal and full_c is not None:  # full blocks must lie wholly at or below the diagonal
        _, _, fm, fn = _listed_blocks(full_c, block_mask.full_kv_indices, batch, heads)
        last_key = torch.clamp((fn + 1) * bk, max=seqlen_k) - 1
        if bool((last_key > fm * bq + offset).any()):
            raise err
    b, h, m, n = _listed_blocks(block_mask.kv_num_blocks, block_mask.kv_indices, batch, heads)
    if b.numel() == 0:
        return
    dev = b.device
    q_idx = m[:, None, None] * bq + torch.arange(bq, device=dev)[None, :, None]
    kv_idx = n[:, None, None] * bk + torch.arange(bk, device=dev)[None, None, :]
    inside = (q_idx < seqlen_q) & (kv_idx < seqlen_k)
    try:
        got = block_mask.mask_mod(b[:, None, None], h[:, None, None], q_idx, kv_idx)
        got = torch.as_tensor(got, device=dev).expand_as(inside)
    except Exception as e:  # noqa: BLE001 - any failure means we cannot vouch for it
        raise ValueError(f"mask: could not evaluate the BlockMask's mask_mod to check it ({e})") from e
    want = (q_idx + offset >= kv_idx) if causal else torch.ones_like(inside)
    if bool(((got != want) & inside).any()):
        raise err


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: Union[BlockSparseMask, "torch.nn.attention.flex_attention.BlockMask"], *,
                           causal: bool = True, scale: Optional[float] = None, return_lse: bool = False,
                           out: Optional[torch.Tensor] = None, validate: bool = True):
    """Attention where each query block attends only its listed key blocks.

    Args:
        q: ``[B, Sq, Hq, D]``; k, v: ``[B, Sk, Hkv, D]`` with ``Hq % Hkv == 0`` (GQA, no
            copy). Any strides with a contiguous last dim (pass ``x.transpose(1, 2)`` for
            Hugging Face ``[B, H, S, D]`` tensors). float32, bfloat16 or float16.
        mask: a :class:`~sparse_attn.masks.BlockSparseMask` or a FlexAttention ``BlockMask``
            whose ``mask_mod`` is causal (with ``causal=True``) or all-True (``causal=False``).
        causal: apply the causal mask, bottom-right aligned when ``Sq < Sk``.
        scale: softmax scale, default ``D ** -0.5``.
        return_lse: also return the natural-log log-sum-exp ``[B, Hq, Sq]`` (float32).
        out: optional output tensor of q's shape and dtype, written in place.
        validate: check the index tensors (range, order); on by default.

    Returns ``out`` (``[B, Sq, Hq, D]``) or ``(out, lse)``. Rows that attend nothing give
    zeros and lse ``-inf``.

    Example::

        import torch, sparse_attn
        q = torch.randn(1, 512, 8, 64, dtype=torch.bfloat16)
        k = torch.randn(1, 512, 2, 64, dtype=torch.bfloat16); v = torch.randn_like(k)
        mask = sparse_attn.estimate_block_sparse(q, k, block_size=64, density=0.5)
        out = sparse_attn.block_sparse_attention(q, k, v, mask)
    """
    _check_inputs(q, k, v, out, "block_sparse_attention")
    if not isinstance(mask, BlockSparseMask):
        from torch.nn.attention.flex_attention import BlockMask

        if not isinstance(mask, BlockMask):
            raise ValueError(
                f"block_sparse_attention: mask must be a BlockSparseMask or a FlexAttention BlockMask, "
                f"got {type(mask).__name__}"
            )
        mask = _flex_to_mask(mask, q.shape[0], q.shape[2], q.shape[1], k.shape[1], causal)
    if out is None:
        out = _new_out(q)
    bq, bk = mask.block_size
    lse = ops.block_sparse_attention(q, k, v, out, mask.counts, mask.indices, mask.full_counts,
                                     mask.full_indices, bq, bk, causal, _scale(q, scale), validate)
    return (out, lse) if return_lse else out


def streaming_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, sink_tokens: int,
                        window_tokens: int, scale: Optional[float] = None, return_lse: bool = False,
                        out: Optional[torch.Tensor] = None):
    """Causal sink + local-window ("A-shape", StreamingLLM) attention, token exact.

    A query at key position ``p`` attends key ``j`` iff ``j <= p`` and
    (``j < sink_tokens`` or ``p - j < window_tokens``). No index tensor is built. Shapes,
    dtypes and return values as in :func:`block_sparse_attention`.

    Example::

        import torch, sparse_attn
        q = torch.randn(1, 4096, 8, 128, dtype=torch.bfloat16)
        k = torch.randn(1, 4096, 2, 128, dtype=torch.bfloat16); v = torch.randn_like(k)
        out = sparse_attn.streaming_attention(q, k, v, sink_tokens=128, window_tokens=1024)
    """
    _check_inputs(q, k, v, out, "streaming_attention")
    for name, val in (("sink_tokens", sink_tokens), ("window_tokens", window_tokens)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise ValueError(f"streaming_attention: {name} must be an int >= 0, got {val!r}")
    if out is None:
        out = _new_out(q)
    lse = ops.streaming_attention(q, k, v, out, sink_tokens, window_tokens, _scale(q, scale))
    return (out, lse) if return_lse else out
