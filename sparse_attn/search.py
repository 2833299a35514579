"""Offline pattern search, first piece: attention recall of candidate sparse patterns.

The recall of a pattern for one query head is the share of the true (dense, causal)
softmax mass that the pattern's mask keeps, averaged over query rows. It is computed one
query block at a time (``[block, Sk]`` float32 scores per head), so memory stays bounded
however long the sequence; the N x N matrix is never built.

Candidates (each evaluated for every query head at once):

* ``("dense",)``
* ``("streaming", sink_tokens, window_tokens)``
* ``("vertical_slash", vertical [B|1, H|1, NV], slash [B|1, H|1, NS])`` (main diagonal always in)
* ``("block_sparse", BlockSparseMask)``

Example::

    import torch
    from sparse_attn.search import attention_recall
    q = torch.randn(1, 512, 4, 64); k = torch.randn(1, 512, 2, 64)
    r = attention_recall(q, k, [("dense",), ("streaming", 16, 128)])   # [2 candidates, B, Hq]
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .masks import BlockSparseMask

__all__ = ["attention_recall"]


def _candidate_mask(cand, b: int, rows: torch.Tensor, Sk: int, Hq: int) -> torch.Tensor:
    """Bool [Hq, len(rows), Sk] of what the candidate keeps for key positions `rows`
    (causality applied by the caller)."""
    kind = cand[0]
    j = torch.arange(Sk)
    p = rows[:, None]
    if kind == "dense":
        return torch.ones(1, len(rows), Sk, dtype=torch.bool).expand(Hq, -1, -1)
    if kind == "streaming":
        sink, window = int(cand[1]), int(cand[2])
        keep = (j[None, :] < sink) | (p - j[None, :] < window)
        return keep[None].expand(Hq, -1, -1)
    if kind == "vertical_slash":
        vertical, slash = cand[1], cand[2]
        v = vertical[b if vertical.shape[0] > 1 else 0].long()  # [H|1, NV]
        s = slash[b if slash.shape[0] > 1 else 0].long()
        # column Sk is a spill slot for out-of-range entries
        cols = torch.zeros(v.shape[0], Sk + 1, dtype=torch.bool).scatter_(1, v.clamp(0, Sk), True)[:, :Sk]
        offs = torch.zeros(s.shape[0], Sk + 1, dtype=torch.bool).scatter_(1, s.clamp(0, Sk), True)[:, :Sk]
        offs[:, 0] = True  # the main diagonal, as the op
        d = (p - j[None, :]).clamp(min=0, max=Sk - 1)  # [rows, Sk]; negative offsets masked by causality
        keep = cols[:, None, :] | offs[:, d]
        return keep.expand(Hq, -1, -1) if keep.shape[0] == 1 else keep
    if kind == "block_sparse":
        mask: BlockSparseMask = cand[1]
        bq, bk = mask.block_size
        dense = mask.to_dense()  # [Bm, Hm, MB, NB] blocks (small)
        blk = dense[b if dense.shape[0] > 1 else 0]
        keep = blk[:, rows // bq][:, :, j // bk]  # rows are query indices here (see the caller)
        return keep.expand(Hq, -1, -1) if keep.shape[0] == 1 else keep
    raise ValueError(f"attention_recall: unknown candidate {kind!r} (dense, streaming, vertical_slash, block_sparse)")


def attention_recall(q: torch.Tensor, k: torch.Tensor, candidates: Sequence, *, block: int = 128,
                     scale: Optional[float] = None) -> torch.Tensor:
    """Recall of each candidate for each (batch, query head): ``float64 [len(candidates), B, Hq]``.

    ``q [B, Sq, Hq, D]``, ``k [B, Sk, Hkv, D]`` (GQA: query head h reads KV head
    h // (Hq // Hkv)); causal, bottom-right aligned. Rows that see no key count as recall 1.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention_recall: q must be [B, Sq, Hq, D] and k [B, Sk, Hkv, D], got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"attention_recall: q heads ({Hq}) must be a multiple of k heads ({Hkv})")
    scale = D ** -0.5 if scale is None else float(scale)
    g = Hq // Hkv
    total = torch.zeros(len(candidates), B, Hq, dtype=torch.float64)
    j = torch.arange(Sk)
    for b in range(B):
        kb = k[b].float().permute(1, 2, 0)  # [Hkv, D, Sk]
        for r0 in range(0, Sq, block):
            r1 = min(r0 + block, Sq)
            qi = torch.arange(r0, r1)
            pos = qi + (Sk - Sq)  # key positions of these query rows
            qb = q[b, r0:r1].float().permute(1, 0, 2).reshape(Hkv, g * (r1 - r0), D)
            s = torch.bmm(qb, kb).view(Hq, r1 - r0, Sk) * scale  # [Hq, rows, Sk]
            causal = j[None, :] <= pos[:, None]
            s = s.masked_fill(~causal[None], float("-inf"))
            p = torch.softmax(s, dim=-1).nan_to_num_(0.0)  # rows seeing nothing: all zeros
            seen = causal.any(-1)  # [rows]
            for c, cand in enumerate(candidates):
                rows = qi if cand[0] == "block_sparse" else pos
                keep = _candidate_mask(cand, b, rows, Sk, Hq)
                kept = (p * keep).sum(-1).double()  # [Hq, rows]
                kept = torch.where(seen[None], kept, torch.ones_like(kept))
                total[c, b] += kept.sum(-1)
    return total / Sq
