"""Loads the compiled extension (which registers the torch.library ops) and adds the
fake (meta) kernels that let the ops run under ``torch.compile(fullgraph=True)``."""
import torch

from . import _C  # noqa: F401  (registers torch.ops.sparse_attn.*)

ops = torch.ops.sparse_attn


def _lse_like(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.register_fake("sparse_attn::block_sparse_attention")
def _block_sparse_attention_fake(q, k, v, out, counts, indices, full_counts, full_indices,
                                 block_q, block_k, causal, scale, validate):
    return _lse_like(q)


@torch.library.register_fake("sparse_attn::streaming_attention")
def _streaming_attention_fake(q, k, v, out, sink_tokens, window_tokens, scale):
    return _lse_like(q)
