"""Run-time vertical-slash estimator (MInference's, written fresh).

The last ``L`` queries of a prompt are scored against every key; a key column that many of
them attend is a *vertical*, a diagonal ``s = p - j`` (query position minus key position)
that they attend is a *slash*. Each query head keeps its top columns and top diagonals.

Example::

    import torch
    from sparse_attn.vertical_slash_estimator import estimate_vertical_slash
    q = torch.randn(1, 500, 4, 64); k = torch.randn(1, 500, 2, 64)     # GQA, 2 q heads per kv head
    vertical, slash = estimate_vertical_slash(q, k, n_vertical=64, n_slash=128)
    vertical.shape, slash.shape                                        # [1, 4, 64], [1, 4, 128]

Cost: one float32 ``[L, Sk]`` score matrix per query head, processed a bounded chunk of heads
at a time (``_SCORE_BUDGET_BYTES``), so memory is ``O(L * Sk)`` per head in flight.
"""
from __future__ import annotations

import numbers
from typing import Optional, Tuple

import torch

__all__ = ["estimate_vertical_slash"]

# Largest float32 score buffer of one chunk of heads. Heads are processed a chunk at a time so
# peak memory stays bounded. 32 MiB (one kv-head group at L=64, Sk=32k, group 4) measured faster
# than 64-256 MiB on a 2-core Xeon (a smaller buffer stays in cache and is faulted in once).
_SCORE_BUDGET_BYTES = 32 << 20
# Keys per matmul, as float32 bytes of the chunk's kv heads (see _matmul_into).
_KEY_TILE_BYTES = 4 << 20

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_int(name: str, value, minimum: int) -> int:
    # bool is an int subclass: reject it explicitly, True would silently mean 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"estimate_vertical_slash: {name} must be a {kind} int, got {value!r}")
    return int(value)


def _check_inputs(q, k):
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"estimate_vertical_slash: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"estimate_vertical_slash: {name} must be [batch, seqlen, heads, head_dim], "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"estimate_vertical_slash: {name} dtype must be float32, bfloat16 or float16, "
                             f"got {t.dtype}")
        if t.shape[1] == 0 or t.shape[2] == 0 or t.shape[3] == 0:
            raise ValueError(f"estimate_vertical_slash: {name} has an empty seqlen, heads or head_dim: "
                             f"{tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise ValueError(f"estimate_vertical_slash: {name} must have a contiguous last dim (stride 1), "
                             f"got strides {t.stride()}")
    if q.dtype != k.dtype:
        raise ValueError(f"estimate_vertical_slash: q and k dtypes differ ({q.dtype} vs k {k.dtype})")
    if q.device != k.device:
        raise ValueError(f"estimate_vertical_slash: q and k devices differ ({q.device} vs k {k.device})")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise ValueError(f"estimate_vertical_slash: k {tuple(k.shape)} must match q {tuple(q.shape)} "
                         f"in batch and head_dim")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"estimate_vertical_slash: k heads ({k.shape[2]}) must divide q heads ({q.shape[2]})")


def estimate_vertical_slash(q: torch.Tensor, k: torch.Tensor, *, n_vertical: int, n_slash: int,
                            last_q: int = 64, sink_tokens: int = 30, local_diagonals: int = 100,
                            scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top key columns and diagonals per query head, from the attention of the last queries.

    Args:
        q: ``[B, Sq, Hq, D]``, k: ``[B, Sk, Hkv, D]`` (any strides, last dim contiguous; float32,
            bfloat16 or float16, same dtype). GQA: query head ``h`` uses kv head ``h // (Hq // Hkv)``;
            K is never expanded nor copied (16-bit keys are up-converted a small tile at a time).
        n_vertical, n_slash: how many key columns / diagonals to keep (clipped to ``Sk``).
        last_q: the last ``min(last_q, Sq)`` query rows are scored. Query row ``i`` sits at key
            position ``i + Sk - Sq`` (bottom-right causal); it sees keys ``j <= i + Sk - Sq``.
        sink_tokens: keys ``0 .. sink_tokens-1`` are always kept as verticals.
        local_diagonals: offsets ``0 .. local_diagonals-1`` are always kept as slashes.
        scale: score scale, default ``D ** -0.5``.

    Returns:
        ``vertical`` int32 ``[B, Hq, min(n_vertical, Sk)]`` key positions and ``slash`` int32
        ``[B, Hq, min(n_slash, Sk)]`` diagonal offsets (0 = main diagonal), each sorted ascending.

    A key's vertical score is the sum of its softmax probability over the scored rows; a
    diagonal's slash score is the sum of the probabilities on it. Scores are computed in the
    inputs' dtype (q pre-scaled, as MInference does: bf16 scores use AMX), softmax and sums
    in float32.
    """
    _check_inputs(q, k)
    n_vertical = _check_int("n_vertical", n_vertical, 1)
    n_slash = _check_int("n_slash", n_slash, 1)
    last_q = _check_int("last_q", last_q, 1)
    sink_tokens = _check_int("sink_tokens", sink_tokens, 0)
    local_diagonals = _check_int("local_diagonals", local_diagonals, 0)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise ValueError(f"estimate_vertical_slash: scale must be a float or None, got {scale!r}")
    B, Sq, Hq, D = q.shape
    Sk, Hkv = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    # Rows at a negative key position (Sq > Sk) see no key and add nothing: drop them.
    L = min(last_q, Sq, Sk)
    vert = torch.empty(B, Hq, Sk, dtype=torch.float32, device=q.device)
    slash = torch.empty(B, Hq, Sk, dtype=torch.float32, device=q.device)
    for b in range(B):
        _score_batch_entry(q[b, Sq - L:], k[b], scale, vert[b], slash[b])
    vert[..., :sink_tokens] = float("inf")     # forced picks win every top-k comparison
    slash[..., :local_diagonals] = float("inf")
    return _top_sorted(vert, min(n_vertical, Sk)), _top_sorted(slash, min(n_slash, Sk))


def _top_sorted(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the n largest scores of each row, ascending, int32 [..., n]."""
    idx = torch.topk(scores, n, dim=-1, sorted=False).indices
    # Marking the picks and listing the marked positions gives them in ascending order, and
    # was ~2x cheaper than sorting 6k indices per row. Each row has exactly n marks.
    picked = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)
    return picked.nonzero()[:, -1].to(torch.int32).view(*scores.shape[:-1], n)


def _chunks(Hkv: int, g: int, row_bytes: int):
    """(kv heads [k0, k1), group members [g0, g1)) per chunk: whole kv-head groups while one
    fits the budget, else slices of a single group (``row_bytes`` = one query head's buffer)."""
    per_chunk = max(1, _SCORE_BUDGET_BYTES // row_bytes)
    if per_chunk >= g:
        step = per_chunk // g
        for k0 in range(0, Hkv, step):
            yield k0, min(k0 + step, Hkv), 0, g
    else:
        for k0 in range(Hkv):
            for g0 in range(0, g, per_chunk):
                yield k0, k0 + 1, g0, min(g0 + per_chunk, g)


def _score_batch_entry(q_last, kb, scale, vert_out, slash_out):
    """Scores one batch entry. q_last ``[L, Hq, D]``, kb ``[Sk, Hkv, D]``; writes float32
    vert_out / slash_out ``[Hq, Sk]``."""
    L, Hq, D = q_last.shape
    Sk, Hkv = kb.shape[0], kb.shape[1]
    g = Hq // Hkv
    # [Hkv, g, L, D], pre-scaled: the L rows of a kv head's whole group sit together so one
    # matmul per kv head serves the group (q is small; this copy is O(L * Hq * D)). 16-bit
    # inputs are scored in their own dtype, as MInference does (AMX: ~5x the fp32 matmul
    # rate here; torch has no 16-bit x 16-bit -> fp32 matmul on CPU), and the softmax reads
    # those scores into float32.
    qg = (q_last.permute(1, 0, 2).float() * scale).to(q_last.dtype).contiguous().view(Hkv, g, L, D)
    dev = q_last.device
    chunks = list(_chunks(Hkv, g, L * Sk * 4))
    first = chunks[0]                                     # the first chunk is the largest
    size = (first[1] - first[0]) * (first[3] - first[2]) * L * Sk
    buf = torch.empty(size, dtype=torch.float32, device=dev)
    raw = buf if q_last.dtype == torch.float32 else torch.empty(size, dtype=q_last.dtype, device=dev)
    tri = torch.ones(L, L, dtype=torch.bool, device=dev).triu_(1)              # causal: j > p
    corner_j = torch.arange(L, device=dev)[:, None] - 1 - torch.arange(max(L - 1, 0), device=dev)
    for k0, k1, g0, g1 in chunks:
        nk, n = k1 - k0, (k1 - k0) * (g1 - g0)           # kv heads, query heads in this chunk
        h0 = k0 * g + g0                                  # the chunk's query heads: h0 .. h0+n-1
        s = raw[: n * L * Sk].view(nk, (g1 - g0) * L, Sk)
        _matmul_into(s, qg[k0:k1, g0:g1].reshape(nk, (g1 - g0) * L, D), kb[:, k0:k1])
        sc = s.view(n, L, Sk)
        # Row r sits at key position Sk - L + r; only the last L columns hold masked keys.
        sc[:, :, Sk - L:].masked_fill_(tri, float("-inf"))
        p = buf[: n * L * Sk].view(n, L, Sk)
        if sc.data_ptr() != p.data_ptr():
            p.copy_(sc)  # to float32 first: softmax(dtype=float32) from 16-bit ran 5x slower
        # In place (no second buffer): softmax works row by row, element-wise, so out may alias.
        torch.softmax(p, dim=-1, out=p)
        torch.sum(p, dim=1, out=vert_out[h0:h0 + n])
        # Diagonal s of row r is column j = Sk - L + r - s. A view whose row stride is Sk + 1
        # walks each diagonal down the rows: element (r, c) is p[r, r + c], i.e. s = Sk - L - c.
        # For c >= 0 it never leaves row r, so it covers s = 0 .. Sk - L exactly.
        diag = p.as_strided((n, L, Sk - L + 1), (L * Sk, Sk + 1, 1), p.storage_offset())
        slash_out[h0:h0 + n, : Sk - L + 1] = diag.sum(dim=1).flip(-1)
        if L > 1:
            # Offsets s = Sk - L + 1 + m (m = 0 .. L-2) only touch the first L - 1 keys: row r
            # holds column j = r - 1 - m (= corner_j[r, m]) when that is >= 0. A tiny gather.
            corner = p[:, :, : L - 1].gather(-1, corner_j.clamp(min=0).expand(n, L, L - 1))
            slash_out[h0:h0 + n, Sk - L + 1:] = corner.masked_fill_(corner_j < 0, 0.0).sum(dim=1)


def _matmul_into(out: torch.Tensor, a: torch.Tensor, k: torch.Tensor) -> None:
    """out[h] = a[h] @ k[:, h].T in the inputs' dtype. a: [n, M, D]; k: [Sk, n, D], a view of K."""
    Sk, n, D = k.shape
    # One key tile at a time: MKL's sgemm ran ~1.6x faster on [M, D] x [D, 8k] products than on
    # a single [D, 32k] one, and a tile bounds any staging copy (never all of K at once).
    tile = max(1, _KEY_TILE_BYTES // (n * D * 4))
    for t0 in range(0, Sk, tile):
        kt = k[t0:t0 + tile].permute(1, 2, 0)  # [n, D, tile]: float32 bmm reads it in place
        if kt.dtype != torch.float32:
            # 16-bit bmm on this strided view ran 8x slower than on a contiguous [n, tile, D]
            # copy of the tile (read transposed).
            kt = k[t0:t0 + tile].permute(1, 0, 2).contiguous().transpose(1, 2)
        torch.bmm(a, kt, out=out[:, :, t0:t0 + tile])
