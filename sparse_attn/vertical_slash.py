"""Vertical-slash prefill attention (MInference): per query head, a set of key columns
("vertical") plus a set of diagonals ("slash").

The query at key position ``p`` attends key ``j`` iff ``j <= p`` (when causal) and ``j`` is a
column or ``p - j`` is a diagonal offset. The main diagonal (offset 0) is always attended,
whatever the lists say, so no row is left without keys. Estimate the lists at run time
with :func:`sparse_attn.estimate_vertical_slash`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._ops import ops
from .attention import _check_inputs, _new_out, _scale

__all__ = ["vertical_slash_attention", "vertical_slash_index", "normalize_vertical_slash"]

_INT32_MAX = 2**31 - 1


def _normalize_list(x, name: str, limit: int, op: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorted, duplicate-free int32 ``[B, H, N]`` with its counts ``[B, H]``; entries >= limit
    are dropped (they cover no key). Negative entries are an error."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{op}: {name} must be [batch, heads, n], got shape {tuple(x.shape)}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise ValueError(f"{op}: {name} must be an integer tensor, got {x.dtype}")
    # Negative entries are rejected by the op itself (a data-dependent check here would
    # break torch.compile(fullgraph=True)); sorting keeps them first, where it looks.
    x = x.to(torch.int64)
    x = torch.where(x >= limit, _INT32_MAX, x).sort(dim=-1).values
    if x.shape[-1] > 1:  # repeated entries -> sentinel, then sort again
        dup = torch.zeros_like(x, dtype=torch.bool)
        dup[..., 1:] = x[..., 1:] == x[..., :-1]
        x = torch.where(dup, _INT32_MAX, x).sort(dim=-1).values
    count = (x < limit).sum(-1).to(torch.int32)
    return x.to(torch.int32).contiguous(), count


def normalize_vertical_slash(vertical: torch.Tensor, slash: torch.Tensor, seqlen_k: int, *,
                             op: str = "normalize_vertical_slash"):
    """Sorts and de-duplicates the lists and drops entries ``>= seqlen_k`` (a column or an
    offset past the sequence covers no key, so budgets larger than the sequence are fine).
    Returns ``(vertical, vertical_count, slash, slash_count)``, int32, as the ops take them.
    Negative entries raise ``ValueError``."""
    v, vc = _normalize_list(vertical, "vertical", seqlen_k, op)
    s, sc = _normalize_list(slash, "slash", seqlen_k, op)
    for dim, what in ((0, "batch"), (1, "head")):
        a, b = v.shape[dim], s.shape[dim]
        if a != b and 1 not in (a, b):
            raise ValueError(f"{op}: vertical and slash disagree on the {what} dimension "
                             f"({tuple(vertical.shape)} vs {tuple(slash.shape)})")
    return v, vc, s, sc


def vertical_slash_index(vertical: torch.Tensor, slash: torch.Tensor, *, seqlen_q: int, seqlen_k: int,
                         block_size: int = 64):
    """Converts a vertical-slash pattern to per-query-block key blocks plus columns.

    For query block ``m`` (rows ``[m * block_size, (m + 1) * block_size)``, bottom-right
    causal alignment) it lists the key blocks ``[n * block_size, (n + 1) * block_size)``
    crossed by some diagonal of ``slash`` (plus the main diagonal, always) inside the block,
    and the columns of ``vertical`` that the block may see (``j <= `` its last key position)
    and that lie in no listed key block. A key covered by a block and a column is listed
    once, as part of the block. The blocks over-cover the diagonals; the attention applies
    the exact element mask inside them.

    Args:
        vertical: int ``[B, H, NV]`` key positions; slash: int ``[B, H, NS]`` diagonal
            offsets ``p - j`` (0 = main). Any order; duplicates and entries ``>= seqlen_k``
            are dropped; negative entries raise ``ValueError``. B and H may be 1 in one of
            them (broadcast).
        seqlen_q, seqlen_k: query and key lengths; block_size: rows and keys per block.

    Returns ``(block_count [B, H, MB], block_offset [B, H, MB, NB], column_count [B, H, MB],
    column_index [B, H, MB, NV])``, int32, ``MB = ceil(seqlen_q / block_size)``,
    ``NB = min(2 * (NS + 1), ceil(seqlen_k / block_size))``. ``block_offset`` holds the first
    key of each listed block, ascending; ``column_index`` ascending. Entries past the counts
    are 0.

    Example::

        import torch, sparse_attn
        vertical = torch.tensor([[[0, 5, 300]]]); slash = torch.tensor([[[0, 64]]])
        bc, bo, cc, ci = sparse_attn.vertical_slash_index(vertical, slash, seqlen_q=512,
                                                          seqlen_k=512, block_size=64)
    """
    op = "vertical_slash_index"
    for name, val in (("seqlen_q", seqlen_q), ("seqlen_k", seqlen_k), ("block_size", block_size)):
        if not isinstance(val, int) or isinstance(val, bool) or val < (1 if name == "block_size" else 0):
            raise ValueError(f"{op}: {name} must be an int >= {1 if name == 'block_size' else 0}, got {val!r}")
    v, vc, s, sc = normalize_vertical_slash(vertical, slash, seqlen_k, op=op)
    return ops.vertical_slash_index(v, vc, s, sc, seqlen_q, seqlen_k, block_size)


def vertical_slash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vertical: torch.Tensor,
                             slash: torch.Tensor, *, causal: bool = True, scale: Optional[float] = None,
                             return_lse: bool = False, out: Optional[torch.Tensor] = None):
    """Attention over a vertical-slash pattern, exact to the element.

    Query ``p`` (its key position, bottom-right aligned) attends key ``j`` iff ``j`` is in
    ``vertical[b, h]``, or ``p - j`` is in ``slash[b, h]`` or is 0, and ``j <= p`` when
    ``causal``. The CPU kernel walks the key blocks of :func:`vertical_slash_index` with the
    block-sparse tile loop under this element mask and gathers the leftover columns, both
    into one online softmax.
    On CUDA (bfloat16 / float16, head_dim 64 / 128) the prefill kernel does the same per
    64-row tile from an index it builds on the device (not yet run on a GPU: see
    csrc/cuda/README.md).

    Args:
        q: ``[B, Sq, Hq, D]``; k, v: ``[B, Sk, Hkv, D]`` (GQA without copies, any strides
            with a contiguous last dim), float32, bfloat16 or float16.
        vertical: int ``[B or 1, Hq or 1, NV]`` key positions; slash: int
            ``[B or 1, Hq or 1, NS]`` diagonal offsets. Normalized as in
            :func:`vertical_slash_index` (budgets larger than the sequence are fine).
        causal, scale, return_lse, out: as in :func:`sparse_attn.block_sparse_attention`.

    Returns ``out`` or ``(out, lse)``; lse is ``[B, Hq, Sq]`` float32.

    Example::

        import torch, sparse_attn
        q = torch.randn(1, 2048, 8, 128, dtype=torch.bfloat16)
        k = torch.randn(1, 2048, 2, 128, dtype=torch.bfloat16); v = torch.randn_like(k)
        vertical, slash = sparse_attn.estimate_vertical_slash(q, k, n_vertical=128, n_slash=256)
        out = sparse_attn.vertical_slash_attention(q, k, v, vertical, slash)
    """
    op = "vertical_slash_attention"
    _check_inputs(q, k, v, out, op)
    vl, vc, sl, sc = normalize_vertical_slash(vertical, slash, k.shape[1], op=op)
    for name, t in (("vertical", vl), ("slash", sl)):
        if t.shape[0] not in (1, q.shape[0]) or t.shape[1] not in (1, q.shape[2]):
            raise ValueError(f"{op}: {name} must be [batch or 1, query heads or 1, n] = "
                             f"[{q.shape[0]} or 1, {q.shape[2]} or 1, n], got shape {tuple(t.shape)}")
    if out is None:
        out = _new_out(q)
    lse = ops.vertical_slash_attention(q, k, v, out, vl, vc, sl, sc, bool(causal), _scale(q, scale))
    return (out, lse) if return_lse else out
