"""sparse-attn: sparse attention kernels for long-context LLM inference.

Prefill ops (CPU engine): :func:`block_sparse_attention`, :func:`streaming_attention`.
Masks: :class:`BlockSparseMask`, :func:`estimate_block_sparse`, :func:`streaming_mask`.
Exact float64 references for tests: :mod:`sparse_attn.reference`.
"""
from ._version import __version__
from .attention import block_sparse_attention, streaming_attention
from .build import build_info
from .masks import BlockSparseMask, estimate_block_sparse, streaming_mask

__all__ = [
    "__version__",
    "BlockSparseMask",
    "block_sparse_attention",
    "build_info",
    "estimate_block_sparse",
    "streaming_attention",
    "streaming_mask",
]
