"""sparse-attn: sparse attention kernels for long-context LLM inference.

Prefill ops (CPU engine): :func:`block_sparse_attention`, :func:`streaming_attention`,
:func:`vertical_slash_attention`. Decode: :class:`PagedKVCache`, :func:`paged_decode_attention`,
:func:`quest_scores`, :func:`select_pages`, :func:`quest_decode`.
Masks and estimators: :class:`BlockSparseMask`, :func:`estimate_block_sparse`,
:func:`streaming_mask`, :func:`estimate_vertical_slash`, :func:`vertical_slash_index`.
Exact float64 references for tests: :mod:`sparse_attn.reference`.
"""
from ._version import __version__
from .attention import block_sparse_attention, streaming_attention
from .build import build_info
from .masks import BlockSparseMask, estimate_block_sparse, streaming_mask
from .paged import (DecodePlan, PagedKVCache, paged_decode_attention, plan_decode, quest_decode, quest_scores,
                    select_pages)
from .vertical_slash import vertical_slash_attention, vertical_slash_index
from .vertical_slash_estimator import estimate_vertical_slash

__all__ = [
    "__version__",
    "BlockSparseMask",
    "DecodePlan",
    "PagedKVCache",
    "block_sparse_attention",
    "build_info",
    "estimate_block_sparse",
    "estimate_vertical_slash",
    "paged_decode_attention",
    "plan_decode",
    "quest_decode",
    "quest_scores",
    "select_pages",
    "streaming_attention",
    "streaming_mask",
    "vertical_slash_attention",
    "vertical_slash_index",
]
