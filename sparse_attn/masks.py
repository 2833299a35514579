"""Block-sparse masks: the index format, converters, and run-time estimators.

A :class:`BlockSparseMask` uses the layout of PyTorch FlexAttention's ``BlockMask``
(``kv_num_blocks`` / ``kv_indices``): query block ``m`` attends key blocks
``indices[..., m, :counts[..., m]]`` (ascending). Entries past the count are never read.
Optional ``full_counts`` / ``full_indices`` list blocks that need no element mask; the
union of both lists is attended.

Example::

    import torch, sparse_attn
    from sparse_attn.masks import BlockSparseMask
    blocks = torch.tril(torch.ones(4, 4, dtype=torch.bool))      # 4 x 4 causal block map
    mask = BlockSparseMask.from_dense(blocks[None, None], block_size=64)
    q = torch.randn(1, 256, 4, 64); k = torch.randn(1, 256, 2, 64); v = torch.randn_like(k)
    out = sparse_attn.block_sparse_attention(q, k, v, mask)       # == dense causal attention
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

BlockSize = Union[int, Tuple[int, int]]


def _pair(block_size: BlockSize) -> Tuple[int, int]:
    if isinstance(block_size, int):
        return (block_size, block_size)
    bq, bk = block_size
    return (int(bq), int(bk))


def _dense_to_lists(block_map: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """bool [B, H, MB, NB] -> counts int32 [B, H, MB], indices int32 [B, H, MB, NB] (ascending)."""
    counts = block_map.sum(-1, dtype=torch.int32)
    nb = block_map.shape[-1]
    # Stable sort of "not selected" puts the selected block ids first, in ascending order.
    order = torch.argsort((~block_map).to(torch.int8), dim=-1, stable=True)
    indices = order.to(torch.int32)
    if nb == 0:
        indices = indices.new_zeros(*block_map.shape[:-1], 1)
    return counts.contiguous(), indices.contiguous()


@dataclass
class BlockSparseMask:
    """Block-sparse attention pattern (FlexAttention ``BlockMask`` layout).

    Args:
        counts: int32 ``[B|1, H|1, MB]``, key blocks attended by each query block.
        indices: int32 ``[B|1, H|1, MB, K]``, the key block ids, ascending within the count.
        block_size: ``(BQ, BK)`` or one int for both.
        full_counts, full_indices: optional blocks that need no element mask (same layout).

    A size-1 batch or head dimension broadcasts. ``H`` counts query heads.
    """

    counts: torch.Tensor
    indices: torch.Tensor
    block_size: BlockSize = 64
    full_counts: Optional[torch.Tensor] = None
    full_indices: Optional[torch.Tensor] = None

    def __post_init__(self):
        self.block_size = _pair(self.block_size)
        for name in ("counts", "indices", "full_counts", "full_indices"):
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"BlockSparseMask.{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype != torch.int32:
                raise ValueError(f"BlockSparseMask.{name} must be int32, got {t.dtype}")
        if self.counts.dim() != 3:
            raise ValueError(f"BlockSparseMask.counts must be [B, H, MB], got shape {tuple(self.counts.shape)}")
        if self.indices.dim() != 4 or self.indices.shape[:3] != self.counts.shape:
            raise ValueError(
                f"BlockSparseMask.indices must be [B, H, MB, K] matching counts {tuple(self.counts.shape)}, "
                f"got shape {tuple(self.indices.shape)}"
            )
        if (self.full_counts is None) != (self.full_indices is None):
            raise ValueError("BlockSparseMask.full_counts and full_indices must be given together")
        if self.full_counts is not None and (
            self.full_counts.dim() != 3
            or self.full_indices.dim() != 4
            or self.full_indices.shape[:3] != self.full_counts.shape
        ):
            raise ValueError("BlockSparseMask.full_counts/full_indices must be [B, H, MB] / [B, H, MB, K]")
        bq, bk = self.block_size
        if bq <= 0 or bk <= 0:
            raise ValueError(f"BlockSparseMask.block_size must be positive, got {self.block_size}")

    @property
    def num_q_blocks(self) -> int:
        return self.counts.shape[-1]

    @classmethod
    def from_dense(cls, block_map: torch.Tensor, block_size: BlockSize = 64) -> "BlockSparseMask":
        """From a bool block map ``[B|1, H|1, MB, NB]`` (True = attend the block)."""
        if block_map.dtype != torch.bool or block_map.dim() != 4:
            raise ValueError(f"block_map must be a bool [B, H, MB, NB] tensor, got {block_map.dtype} {tuple(block_map.shape)}")
        counts, indices = _dense_to_lists(block_map)
        return cls(counts, indices, block_size)

    def to_dense(self, num_k_blocks: Optional[int] = None) -> torch.Tensor:
        """The attended blocks as a bool map ``[B, H, MB, NB]`` (union of both lists)."""
        nb = num_k_blocks
        if nb is None:
            nb = 0
            for c, i in self._lists():
                if i.numel():
                    valid = torch.arange(i.shape[-1], device=i.device) < c[..., None]
                    nb = max(nb, int(torch.where(valid, i, -1).max()) + 1)
        out = None
        for c, i in self._lists():
            dense = _lists_to_dense(c, i, nb)
            out = dense if out is None else out | dense
        return out

    def _lists(self):
        yield self.counts, self.indices
        if self.full_counts is not None:
            yield self.full_counts, self.full_indices

    def density(self, seqlen_q: int, seqlen_k: int, causal: bool = True) -> float:
        """Fraction of the (causal) blocks that are attended, counted per query head."""
        bq, bk = self.block_size
        nb = math.ceil(seqlen_k / bk)
        dense = self.to_dense(nb).float()
        allowed = _causal_block_map(self.num_q_blocks, nb, bq, bk, seqlen_q, seqlen_k, dense.device) if causal \
            else torch.ones(self.num_q_blocks, nb, dtype=torch.bool, device=dense.device)
        return float((dense * allowed).sum() / (allowed.sum() * dense.shape[0] * dense.shape[1]))

    @classmethod
    def from_flex(cls, block_mask) -> "BlockSparseMask":
        """From a FlexAttention ``BlockMask`` (its ``kv_num_blocks``/``kv_indices`` and
        ``full_kv_*``). Its ``mask_mod`` is not carried over: the attention ops check it
        (see :func:`sparse_attn.block_sparse_attention`)."""
        bs = block_mask.BLOCK_SIZE
        full_c = getattr(block_mask, "full_kv_num_blocks", None)
        full_i = getattr(block_mask, "full_kv_indices", None)
        return cls(
            block_mask.kv_num_blocks.to(torch.int32),
            block_mask.kv_indices.to(torch.int32),
            (int(bs[0]), int(bs[1])),
            None if full_c is None else full_c.to(torch.int32),
            None if full_i is None else full_i.to(torch.int32),
        )

    def to_flex(self, seqlen_q: int, seqlen_k: int, causal: bool = True):
        """A FlexAttention ``BlockMask`` with the same blocks and, if causal, a bottom-right
        causal ``mask_mod`` (for baselines and for checking against ``flex_attention``)."""
        from torch.nn.attention.flex_attention import BlockMask

        offset = seqlen_k - seqlen_q
        if causal:
            def mask_mod(b, h, q_idx, kv_idx):
                return q_idx + offset >= kv_idx
        else:
            def mask_mod(b, h, q_idx, kv_idx):
                return q_idx >= 0
        # Every listed block goes to the partial list so mask_mod is applied everywhere.
        dense = self.to_dense(math.ceil(seqlen_k / self.block_size[1]))
        counts, indices = _dense_to_lists(dense)
        return BlockMask.from_kv_blocks(
            counts, indices, BLOCK_SIZE=self.block_size, mask_mod=mask_mod, seq_lengths=(seqlen_q, seqlen_k)
        )


def _lists_to_dense(counts: torch.Tensor, indices: torch.Tensor, nb: int) -> torch.Tensor:
    k = indices.shape[-1]
    valid = torch.arange(k, device=indices.device) < counts[..., None]
    dense = torch.zeros(*indices.shape[:-1], nb + 1, dtype=torch.bool, device=indices.device)
    # Invalid entries (and out-of-range ids) go to the spare column nb, then are dropped.
    idx = torch.where(valid & (indices >= 0) & (indices < nb), indices.long(), nb)
    dense.scatter_(-1, idx, True)
    return dense[..., :nb]


def _causal_block_map(mb, nb, bq, bk, seqlen_q, seqlen_k, device) -> torch.Tensor:
    """bool [MB, NB]: block (m, n) holds at least one causally visible pair."""
    offset = seqlen_k - seqlen_q
    last_q = torch.clamp(torch.arange(mb, device=device) * bq + bq - 1, max=seqlen_q - 1)
    first_k = torch.arange(nb, device=device) * bk
    return first_k[None, :] <= (last_q + offset)[:, None]


def streaming_mask(seqlen_q: int, seqlen_k: int, *, sink_tokens: int, window_tokens: int,
                   block_size: BlockSize = 64) -> BlockSparseMask:
    """Block-level superset of the streaming (sink + window) pattern: every block that holds
    at least one visible (query, key) pair. Used for baselines and for FlexAttention; the
    token-exact op is :func:`sparse_attn.streaming_attention`."""
    bq, bk = _pair(block_size)
    mb, nb = math.ceil(seqlen_q / bq), math.ceil(seqlen_k / bk)
    offset = seqlen_k - seqlen_q
    m = torch.arange(mb)
    p_first = m * bq + offset
    p_last = torch.clamp(m * bq + bq - 1, max=seqlen_q - 1) + offset
    k_first = torch.arange(nb) * bk
    k_last = torch.clamp(k_first + bk - 1, max=seqlen_k - 1)
    causal = k_first[None, :] <= p_last[:, None]
    sink = k_first[None, :] < sink_tokens
    window = k_last[None, :] > (p_first[:, None] - window_tokens) if window_tokens > 0 else torch.zeros_like(causal)
    return BlockSparseMask.from_dense((causal & (sink | window))[None, None], (bq, bk))


def estimate_block_sparse(q: torch.Tensor, k: torch.Tensor, *, block_size: BlockSize = 64,
                          density: Optional[float] = None, top_k: Optional[int] = None,
                          causal: bool = True) -> BlockSparseMask:
    """Pick key blocks per query block from mean-pooled q . k block scores.

    q ``[B, Sq, Hq, D]``, k ``[B, Sk, Hkv, D]`` (GQA: a KV head's pooled keys serve its whole
    query group; k is never expanded to the query heads, only pooled in float32). Keeps ``top_k`` blocks per row, or ``ceil(density * causal blocks
    of the row)``; the first key block and the diagonal block(s) are always kept.

    Example::

        mask = estimate_block_sparse(q, k, block_size=64, density=0.2)
        out = sparse_attn.block_sparse_attention(q, k, v, mask)
    """
    if (density is None) == (top_k is None):
        raise ValueError("estimate_block_sparse: give exactly one of density or top_k")
    if density is not None and not (0.0 < density <= 1.0):
        raise ValueError(f"estimate_block_sparse: density must be in (0, 1], got {density}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"estimate_block_sparse: top_k must be >= 1, got {top_k}")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError("estimate_block_sparse: q and k must be [batch, seqlen, heads, head_dim]")
    bq, bk = _pair(block_size)
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"estimate_block_sparse: q heads ({Hq}) must be a multiple of k heads ({Hkv})")
    mb, nb = math.ceil(Sq / bq), math.ceil(Sk / bk)
    qp = _mean_pool(q, bq, mb)  # [B, Hq, MB, D] float32
    kp = _mean_pool(k, bk, nb)  # [B, Hkv, NB, D]
    g = Hq // Hkv
    scores = torch.matmul(qp.view(B, Hkv, g * mb, D), kp.transpose(-1, -2)).view(B, Hq, mb, nb)
    allowed = _causal_block_map(mb, nb, bq, bk, Sq, Sk, q.device) if causal \
        else torch.ones(mb, nb, dtype=torch.bool, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # Forced blocks: the first key block and, under causality, the block(s) holding the diagonal.
    forced = torch.zeros(mb, nb, dtype=torch.bool, device=q.device)
    forced[:, 0] = True
    if causal:
        offset = Sk - Sq
        last_q = torch.clamp(torch.arange(mb, device=q.device) * bq + bq - 1, max=Sq - 1)
        first_q = torch.arange(mb, device=q.device) * bq
        lo = torch.clamp((first_q + offset) // bk, 0, nb - 1)
        hi = torch.clamp((last_q + offset) // bk, 0, nb - 1)
        cols = torch.arange(nb, device=q.device)
        forced |= (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])
    forced &= allowed
    scores = scores.masked_fill(forced, float("inf"))
    per_row_allowed = allowed.sum(-1)  # [MB]
    if top_k is not None:
        keep = torch.clamp(torch.full_like(per_row_allowed, top_k), max=per_row_allowed)
    else:
        keep = torch.ceil(per_row_allowed.double() * density).long()
    keep = torch.maximum(keep, forced.sum(-1))
    kmax = int(keep.max()) if keep.numel() else 0
    top = torch.topk(scores, k=max(kmax, 1), dim=-1).indices  # [B, Hq, MB, kmax]
    rank_ok = torch.arange(top.shape[-1], device=q.device) < keep[:, None]
    block_map = torch.zeros(B, Hq, mb, nb, dtype=torch.bool, device=q.device)
    block_map.scatter_(-1, top, rank_ok.expand_as(top))
    return BlockSparseMask.from_dense(block_map & allowed, (bq, bk))


def _mean_pool(x: torch.Tensor, block: int, nblocks: int) -> torch.Tensor:
    """[B, S, H, D] -> float32 [B, H, nblocks, D], mean over each block (the last may be short)."""
    B, S, H, D = x.shape
    pad = nblocks * block - S
    xf = x.float()
    if pad:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, 0, 0, pad))
    sums = xf.view(B, nblocks, block, H, D).sum(2)
    lens = torch.full((nblocks,), block, dtype=torch.float32, device=x.device)
    lens[-1] = S - (nblocks - 1) * block
    return (sums / lens[None, :, None, None]).permute(0, 2, 1, 3).contiguous()
