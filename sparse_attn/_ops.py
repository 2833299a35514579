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


@torch.library.register_fake("sparse_attn::output_like")
def _output_like_fake(q):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


@torch.library.register_fake("sparse_attn::streaming_attention")
def _streaming_attention_fake(q, k, v, out, sink_tokens, window_tokens, scale):
    return _lse_like(q)


@torch.library.register_fake("sparse_attn::vertical_slash_attention")
def _vertical_slash_attention_fake(q, k, v, out, vertical, vertical_count, slash, slash_count, causal, scale):
    return _lse_like(q)


@torch.library.register_fake("sparse_attn::vertical_slash_index")
def _vertical_slash_index_fake(vertical, vertical_count, slash, slash_count, seqlen_q, seqlen_k, block_size):
    batch = max(vertical.shape[0], slash.shape[0])
    heads = max(vertical.shape[1], slash.shape[1])
    mb = -(-seqlen_q // block_size)
    max_blocks = min(2 * (slash.shape[2] + 1), -(-seqlen_k // block_size))
    new = lambda *shape: vertical.new_empty(shape, dtype=torch.int32)  # noqa: E731
    return (new(batch, heads, mb), new(batch, heads, mb, max_blocks), new(batch, heads, mb),
            new(batch, heads, mb, vertical.shape[2]))


@torch.library.register_fake("sparse_attn::paged_kv_write")
def _paged_kv_write_fake(k_pages, v_pages, k_max, k_min, k, v, page_ids, slots):
    return None


@torch.library.register_fake("sparse_attn::quest_scores")
def _quest_scores_fake(q, k_max, k_min, page_table, seqlens, page_size, sum_reduce):
    return q.new_empty((page_table.shape[0], k_max.shape[1], page_table.shape[1]), dtype=torch.float32)


@torch.library.register_fake("sparse_attn::quest_select")
def _quest_select_fake(scores, seqlens, page_size, token_budget, sink_pages, recent_pages):
    B, H, P = scores.shape
    k = min(max(-(-token_budget // page_size), sink_pages + recent_pages), P)
    return scores.new_empty((B, H, k), dtype=torch.int32), scores.new_empty((B, H), dtype=torch.int32)


@torch.library.register_fake("sparse_attn::paged_decode_attention")
def _paged_decode_attention_fake(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale):
    return q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)


@torch.library.register_fake("sparse_attn::quest_decode")
def _quest_decode_fake(q, k_pages, v_pages, k_max, k_min, page_table, seqlens, sum_reduce, token_budget, sink_pages,
                       recent_pages, out, scale):
    return q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)


@torch.library.register_fake("sparse_attn::paged_decode_stream_k")
def _paged_decode_stream_k_fake(q, k_pages, v_pages, page_table, seqlens, pages, counts, out, scale, offsets,
                                slot_base, workers, tile_pages, ws_state, ws_acc):
    return q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
