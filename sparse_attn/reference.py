"""Slow, obviously-correct float64 references for every op of ``sparse_attn``.

Every sparse op here is written as dense attention under an explicit boolean mask
(True = attend), computed in float64. Tests compare the engines against these
functions, so they favour clarity over speed and memory.

Conventions (see DESIGN.md):

* q, k, v are ``[B, S, H, D]`` with any strides; the value head dim may differ from D.
* GQA: query head ``h`` reads KV head ``h // (Hq // Hkv)``. Here the KV heads are simply
  expanded with ``repeat_interleave`` on the float64 copies (fine in a reference).
* ``scale`` defaults to ``D ** -0.5``.
* Causal alignment is bottom-right: query ``i`` sits at key position ``Sk - Sq + i``.
  When ``Sq > Sk`` the first ``Sq - Sk`` query rows therefore attend nothing.
* A row that attends nothing outputs zeros and lse ``-inf``; lse is the natural-log
  log-sum-exp of the *scaled* scores.
* All outputs (including lse) are float64, so tests can measure engine error against them.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "causal_mask",
    "attention",
    "block_sparse_dense_mask",
    "block_sparse_attention",
    "streaming_dense_mask",
    "streaming_attention",
    "vertical_slash_dense_mask",
    "vertical_slash_attention",
    "gather_kv",
    "paged_decode_attention",
    "quest_page_bounds",
    "quest_select_pages",
]


# --------------------------------------------------------------------------- helpers


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, S, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError("q, k, v must have the same batch size")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError("k and v must have the same seqlen and number of heads")
    if q.shape[3] != k.shape[3]:
        raise ValueError("q and k must have the same head_dim")
    if k.shape[2] == 0 or q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"num_q_heads ({q.shape[2]}) must be a multiple of "
                         f"num_kv_heads ({k.shape[2]})")


def _expand_kv_heads(x: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """[B, S, Hkv, D] -> float64 [B, S, Hq, D]; query head h gets KV head h // group."""
    group = num_q_heads // x.shape[2]
    return x.to(torch.float64).repeat_interleave(group, dim=2)


def _num_blocks(n: int, block: int) -> int:
    return (n + block - 1) // block


# --------------------------------------------------------------------------- dense


def causal_mask(seqlen_q: int, seqlen_k: int, device=None) -> torch.Tensor:
    """Bottom-right causal mask, bool ``[Sq, Sk]``: query i attends key j iff j <= Sk - Sq + i."""
    i = torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    return j <= (seqlen_k - seqlen_q) + i


def attention(q, k, v, mask=None, *, scale=None, return_lse=False):
    """Dense attention in float64 under an optional bool mask (True = attend).

    q ``[B, Sq, Hq, D]``, k ``[B, Sk, Hkv, D]``, v ``[B, Sk, Hkv, Dv]``; ``mask`` must be
    broadcastable to ``[B, Hq, Sq, Sk]``. Returns out ``[B, Sq, Hq, Dv]`` float64, and lse
    ``[B, Hq, Sq]`` float64 if ``return_lse``. Fully masked rows give zeros and lse -inf.
    """
    _check_qkv(q, k, v)
    B, Sq, Hq, D = q.shape
    Sk = k.shape[1]
    if scale is None:
        scale = D ** -0.5
    qf = q.to(torch.float64).permute(0, 2, 1, 3)                 # [B, Hq, Sq, D]
    kf = _expand_kv_heads(k, Hq).permute(0, 2, 1, 3)             # [B, Hq, Sk, D]
    vf = _expand_kv_heads(v, Hq).permute(0, 2, 1, 3)             # [B, Hq, Sk, Dv]
    scores = (qf @ kf.transpose(-1, -2)) * scale                 # [B, Hq, Sq, Sk]
    if mask is not None:
        mask = torch.as_tensor(mask, device=scores.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool, got {mask.dtype}")
        target = (B, Hq, Sq, Sk)
        try:
            ok = torch.broadcast_shapes(mask.shape, target) == torch.Size(target)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to {target}")
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                        # -inf for empty rows
    has_keys = torch.isfinite(lse)[..., None]
    probs = torch.where(has_keys, torch.exp(scores - lse[..., None]), 0.0)
    out = (probs @ vf).permute(0, 2, 1, 3)                       # [B, Sq, Hq, Dv]
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- block-sparse


def _block_list_mask(counts, indices, block_size, seqlen_q, seqlen_k) -> torch.Tensor:
    """Dense bool [Bm, Hm, Sq, Sk] of one (counts, indices) block list, no causal mask."""
    if counts.dim() != 3 or indices.dim() != 4 or tuple(indices.shape[:3]) != tuple(counts.shape):
        raise ValueError(f"counts must be [B, H, MB] and indices [B, H, MB, K]; got "
                         f"{tuple(counts.shape)} and {tuple(indices.shape)}")
    BQ, BK = block_size
    NQ, NK = _num_blocks(seqlen_q, BQ), _num_blocks(seqlen_k, BK)
    Bm, Hm, MB, K = indices.shape
    if MB < NQ:
        raise ValueError(f"{MB} query-block rows given, {NQ} needed for seqlen_q={seqlen_q}")
    counts = counts.long()
    if (counts < 0).any() or (counts > K).any():
        raise ValueError(f"counts must lie in [0, {K}]")
    # Only the first counts[m] entries of each row are valid; the rest is never read:
    # its slots are redirected to a dummy column NK that is dropped afterwards.
    valid = torch.arange(K, device=indices.device) < counts[..., None]
    idx = indices.long()
    if ((idx[valid] < 0) | (idx[valid] >= NK)).any():
        raise ValueError(f"a valid block index lies outside [0, {NK})")
    idx = torch.where(valid, idx, NK)
    block_map = torch.zeros(Bm, Hm, MB, NK + 1, dtype=torch.bool, device=indices.device)
    block_map.scatter_(-1, idx, True)
    block_map = block_map[..., :NK]                              # [Bm, Hm, MB, NK]
    q_block = torch.arange(seqlen_q, device=indices.device) // BQ
    k_block = torch.arange(seqlen_k, device=indices.device) // BK
    return block_map[:, :, q_block][..., k_block]                # [Bm, Hm, Sq, Sk]


def block_sparse_dense_mask(counts, indices, block_size, seqlen_q, seqlen_k, *,
                            full_counts=None, full_indices=None, causal=True) -> torch.Tensor:
    """Dense bool ``[Bm, Hm, Sq, Sk]`` of a block-sparse mask (FlexAttention BlockMask layout).

    Query block m (rows ``[m*BQ, min((m+1)*BQ, Sq))``) attends key blocks
    ``indices[..., m, :counts[..., m]]`` (keys ``[n*BK, min((n+1)*BK, Sk))``), united with the
    ``full_*`` lists if given. Entries past a count are never read. ``Hm`` counts query heads.
    If ``causal``, the result is ANDed with the bottom-right causal mask.
    """
    mask = _block_list_mask(counts, indices, block_size, seqlen_q, seqlen_k)
    if (full_counts is None) != (full_indices is None):
        raise ValueError("full_counts and full_indices must be given together")
    if full_counts is not None:
        mask = mask | _block_list_mask(full_counts, full_indices, block_size, seqlen_q, seqlen_k)
    if causal:
        mask = mask & causal_mask(seqlen_q, seqlen_k, device=mask.device)
    return mask


def block_sparse_attention(q, k, v, counts, indices, block_size, *, full_counts=None,
                           full_indices=None, causal=True, scale=None, return_lse=False):
    """Block-sparse attention: :func:`attention` under :func:`block_sparse_dense_mask`."""
    _check_qkv(q, k, v)
    mask = block_sparse_dense_mask(counts, indices, block_size, q.shape[1], k.shape[1],
                                   full_counts=full_counts, full_indices=full_indices,
                                   causal=causal)
    return attention(q, k, v, mask.to(q.device), scale=scale, return_lse=return_lse)


# --------------------------------------------------------------------------- streaming


def streaming_dense_mask(seqlen_q, seqlen_k, sink_tokens, window_tokens, device=None) -> torch.Tensor:
    """Dense bool ``[Sq, Sk]`` of sink + local window (A-shape) attention.

    The query at key position ``p = Sk - Sq + i`` attends key j iff ``j <= p`` and
    (``j < sink_tokens`` or ``p - j < window_tokens``); the window includes the query itself.
    """
    p = (seqlen_k - seqlen_q) + torch.arange(seqlen_q, device=device)[:, None]
    j = torch.arange(seqlen_k, device=device)[None, :]
    return (j <= p) & ((j < sink_tokens) | (p - j < window_tokens))


def streaming_attention(q, k, v, *, sink_tokens, window_tokens, scale=None, return_lse=False):
    """Streaming attention: :func:`attention` under :func:`streaming_dense_mask`."""
    _check_qkv(q, k, v)
    mask = streaming_dense_mask(q.shape[1], k.shape[1], sink_tokens, window_tokens, device=q.device)
    return attention(q, k, v, mask, scale=scale, return_lse=return_lse)


# --------------------------------------------------------------------------- vertical-slash


def vertical_slash_dense_mask(vertical, slash, seqlen_q, seqlen_k, *, causal=True,
                              main_diagonal=True) -> torch.Tensor:
    """Dense bool ``[B, H, Sq, Sk]`` of a vertical-slash pattern.

    ``vertical int [B, H, NV]`` are key positions, ``slash int [B, H, NS]`` diagonal offsets
    (0 = main diagonal). The query at key position p attends key j iff j is in
    ``vertical[b, h]`` or ``p - j`` is in ``slash[b, h]`` (or is 0, with ``main_diagonal``,
    as the op always adds it), and ``j <= p`` when ``causal``. Out-of-range or negative
    values match nothing (so they can serve as padding).
    """
    if vertical.dim() != 3 or slash.dim() != 3:
        raise ValueError(f"vertical must be [B, H, NV] and slash [B, H, NS]; got "
                         f"{tuple(vertical.shape)} and {tuple(slash.shape)}")
    B, H = torch.broadcast_shapes(vertical.shape[:2], slash.shape[:2])  # size-1 dims broadcast
    vertical = vertical.expand(B, H, -1)
    slash = slash.expand(B, H, -1)
    device = vertical.device
    p = (seqlen_k - seqlen_q) + torch.arange(seqlen_q, device=device)[:, None]   # [Sq, 1]
    j = torch.arange(seqlen_k, device=device)[None, :]                           # [1, Sk]
    # column hit: [B, H, Sk]
    in_vertical = (j[0][None, None, :, None] == vertical.long()[:, :, None, :]).any(-1)
    mask = in_vertical[:, :, None, :].expand(B, H, seqlen_q, seqlen_k).clone()
    diagonal = p - j                                                             # [Sq, Sk]
    for s in range(slash.shape[2]):
        mask |= diagonal[None, None] == slash.long()[:, :, s, None, None]
    if main_diagonal:
        mask |= diagonal[None, None] == 0
    return mask & (j <= p) if causal else mask


def vertical_slash_attention(q, k, v, vertical, slash, *, causal=True, scale=None, return_lse=False):
    """Vertical-slash attention: :func:`attention` under :func:`vertical_slash_dense_mask`
    (main diagonal included, as the op does).

    ``vertical``/``slash`` are per query head (``H == Hq``, or 1 to broadcast).
    """
    _check_qkv(q, k, v)
    mask = vertical_slash_dense_mask(vertical, slash, q.shape[1], k.shape[1], causal=causal)
    return attention(q, k, v, mask.to(q.device), scale=scale, return_lse=return_lse)


# --------------------------------------------------------------------------- paged decode


def _check_pages(k_pages, page_table, seqlens) -> None:
    if k_pages.dim() != 4:
        raise ValueError(f"k_pages must be [num_pages, page_size, H_kv, D], got {tuple(k_pages.shape)}")
    if page_table.dim() != 2 or seqlens.dim() != 1 or page_table.shape[0] != seqlens.shape[0]:
        raise ValueError(f"page_table must be [B, max_pages] and seqlens [B]; got "
                         f"{tuple(page_table.shape)} and {tuple(seqlens.shape)}")
    if (seqlens < 0).any() or (seqlens > page_table.shape[1] * k_pages.shape[1]).any():
        raise ValueError("seqlens must lie in [0, max_pages * page_size]")


def gather_kv(k_pages, v_pages, page_table, seqlens, b):
    """Contiguous ``(k, v)``, each ``[L, Hkv, D]``, of sequence b (L = seqlens[b]) from a paged cache.

    Token t lives in page ``page_table[b, t // page_size]``, slot ``t % page_size``.
    """
    _check_pages(k_pages, page_table, seqlens)
    if k_pages.shape[:3] != v_pages.shape[:3]:
        raise ValueError("k_pages and v_pages must agree in num_pages, page_size and H_kv")
    page_size = k_pages.shape[1]
    t = torch.arange(int(seqlens[b]), device=k_pages.device)
    page = page_table[b].to(k_pages.device).long()[t // page_size]
    slot = t % page_size
    return k_pages[page, slot], v_pages[page, slot]


def paged_decode_attention(q, k_pages, v_pages, page_table, seqlens, *, pages=None, counts=None,
                           scale=None, return_lse=False):
    """Decode attention of one new token per sequence over a paged KV cache, in float64.

    q ``[B, Hq, D]`` attends every cached token of its sequence (no causal mask). With
    ``pages int [B, Hkv, K]`` and ``counts int [B, Hkv]``, KV head g of sequence b (and so its
    query heads) attends only the logical pages ``pages[b, g, :counts[b, g]]``; logical page i is
    tokens ``[i*page_size, min((i+1)*page_size, seqlen))``. Returns out ``[B, Hq, Dv]`` float64
    (+ lse ``[B, Hq]`` float64). An empty sequence or selection gives zeros and lse -inf.
    """
    _check_pages(k_pages, page_table, seqlens)
    if q.dim() != 3 or q.shape[0] != seqlens.shape[0]:
        raise ValueError(f"q must be [B, Hq, D] with B = len(seqlens), got {tuple(q.shape)}")
    if (pages is None) != (counts is None):
        raise ValueError("pages and counts must be given together")
    B, Hq, _ = q.shape
    Hkv, page_size = k_pages.shape[2], k_pages.shape[1]
    if pages is not None and (pages.dim() != 3 or tuple(pages.shape[:2]) != (B, Hkv)
                              or tuple(counts.shape) != (B, Hkv)):
        raise ValueError(f"pages must be [B, Hkv, K] and counts [B, Hkv]; got "
                         f"{tuple(pages.shape)} and {tuple(counts.shape)}")
    outs, lses = [], []
    for b in range(B):
        k, v = gather_kv(k_pages, v_pages, page_table, seqlens, b)        # [L, Hkv, D]
        L = k.shape[0]
        mask = torch.ones(Hkv, L, dtype=torch.bool, device=q.device)      # per KV head
        if pages is not None:
            logical_page = torch.arange(L, device=q.device) // page_size
            for g in range(Hkv):
                chosen = pages[b, g, : int(counts[b, g])].to(q.device).long()
                mask[g] = (logical_page[:, None] == chosen[None, :]).any(-1)
        mask = mask.repeat_interleave(Hq // Hkv, dim=0)                   # [Hq, L]
        out, lse = attention(q[b][None, None], k[None], v[None], mask[None, :, None, :],
                             scale=scale, return_lse=True)
        outs.append(out[0, 0])                                            # [Hq, Dv]
        lses.append(lse[0, :, 0])                                         # [Hq]
    out, lse = torch.stack(outs), torch.stack(lses)
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- Quest


def quest_page_bounds(q, k_pages, page_table, seqlens, *, group_reduce="max") -> torch.Tensor:
    """Quest upper bounds, float64 ``[B, Hkv, max_pages]`` (max_pages = page_table.shape[1]).

    For logical page i of sequence b and KV head g, with kmax/kmin the channel-wise max/min of
    that page's keys (taken from the gathered keys, not from stored metadata), query head h
    scores ``sum_d max(q[b,h,d]*kmax[d], q[b,h,d]*kmin[d])`` >= q[b,h]·k for every key k of the
    page; a zero q[b,h,d] contributes 0 whatever kmax/kmin are (+-inf keys included), as in
    every engine (paged.h quest_bound). Scores of the query heads of g's group are reduced
    with ``max`` (default) or ``sum``.
    No softmax scale. Pages at or beyond ``ceil(seqlens[b] / page_size)`` get -inf.
    """
    _check_pages(k_pages, page_table, seqlens)
    Hkv, page_size = k_pages.shape[2], k_pages.shape[1]
    if (q.dim() != 3 or q.shape[0] != seqlens.shape[0] or q.shape[1] % Hkv != 0
            or q.shape[2] != k_pages.shape[3]):
        raise ValueError(f"q must be [B, Hq, D] matching the cache, got {tuple(q.shape)}")
    B, Hq, D = q.shape
    if group_reduce not in ("max", "sum"):
        raise ValueError(f"group_reduce must be 'max' or 'sum', got {group_reduce!r}")
    max_pages = page_table.shape[1]
    bounds = torch.full((B, Hkv, max_pages), float("-inf"), dtype=torch.float64, device=q.device)
    for b in range(B):
        k, _ = gather_kv(k_pages, k_pages, page_table, seqlens, b)
        k = k.to(torch.float64)
        qg = q[b].to(torch.float64).reshape(Hkv, Hq // Hkv, D)                # [Hkv, G, D]
        for i in range(_num_blocks(k.shape[0], page_size)):
            page_keys = k[i * page_size:(i + 1) * page_size]                 # [n, Hkv, D]
            kmax = page_keys.amax(0)[:, None, :]                             # [Hkv, 1, D]
            kmin = page_keys.amin(0)[:, None, :]
            # a zero q_d adds 0 whatever kmax/kmin (0 x inf would be NaN): paged.h quest_bound
            per_head = torch.where(qg == 0, 0.0, torch.maximum(qg * kmax, qg * kmin)).sum(-1)  # [Hkv, G]
            bounds[b, :, i] = per_head.amax(-1) if group_reduce == "max" else per_head.sum(-1)
    return bounds


def quest_select_pages(scores, seqlens, page_size, *, token_budget, sink_pages=1, recent_pages=1):
    """Quest page selection: ``result[b][g]`` is the set of logical page indices to read.

    With ``n = ceil(seqlens[b] / page_size)`` pages and ``budget = ceil(token_budget /
    page_size)``: if ``budget >= n`` every page is taken. Otherwise the first ``sink_pages``
    and the last ``recent_pages`` pages are always taken (even if they alone exceed the
    budget), then the highest-scoring remaining pages until ``budget`` pages in total.

    Ties in ``scores`` make the selected set non-unique; this function breaks them towards
    the lower page index, and tests must accept any set that differs only among tied pages.
    """
    if scores.dim() != 3 or seqlens.dim() != 1 or scores.shape[0] != seqlens.shape[0]:
        raise ValueError(f"scores must be [B, Hkv, max_pages] and seqlens [B]; got "
                         f"{tuple(scores.shape)} and {tuple(seqlens.shape)}")
    budget = _num_blocks(int(token_budget), page_size)
    result = []
    for b in range(scores.shape[0]):
        n = _num_blocks(int(seqlens[b]), page_size)
        if n > scores.shape[2]:
            raise ValueError(f"sequence {b} has {n} pages but scores only {scores.shape[2]}")
        per_head = []
        for g in range(scores.shape[1]):
            if budget >= n:
                per_head.append(set(range(n)))
                continue
            chosen = set(range(min(sink_pages, n))) | set(range(max(n - recent_pages, 0), n))
            rest = [i for i in range(n) if i not in chosen]
            rest.sort(key=lambda i: (-float(scores[b, g, i]), i))
            chosen |= set(rest[: max(budget - len(chosen), 0)])
            per_head.append(chosen)
        result.append(per_head)
    return result
