"""Document-exact attention for packed, padding-free batches: `attn_implementation: varlen`.

A padding-free batch is one row of several documents whose `position_ids` restart at each document (TRL's BFD
packing, our CPT blocks). The attention here reads the document boundaries from those `position_ids` and runs
`torch.nn.attention.varlen.varlen_attn`, the flash-attention kernel inside torch 2.11, causally over each document:
no document sees another, and nothing is spent on padding or on a (tokens x tokens) mask. Where that kernel cannot
run (CPU, float32, dropout, a sliding window) the same documents go through SDPA one at a time, which is exact and
slow. Batches with a padding mask, and generation with a KV cache, go to transformers' SDPA unchanged.

`register()` adds the function to transformers' `AttentionInterface` and a mask function to its
`AttentionMaskInterface` that skips building the 4D mask a packed batch would otherwise get.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VARLEN = "varlen"
_boundaries_cache: dict = {}


def document_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document lengths over the flattened batch (int32, starting with 0) and the longest document.

    A document starts at each row start and wherever a position id is not the previous one plus one (as
    transformers' `find_packed_sequence_indices` decides)."""
    rows, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    start_index = torch.nonzero(starts.flatten(), as_tuple=True)[0].to(torch.int32)
    total = torch.tensor([rows * length], dtype=torch.int32, device=position_ids.device)
    cu_seqlens = torch.cat([start_index, total])
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return cu_seqlens, longest


def forward_boundaries(position_ids: torch.Tensor, batch: int, tokens: int) -> tuple[torch.Tensor, int]:
    """`document_boundaries` once per forward: every layer (and its recomputation) passes the same position_ids
    object. Keyed on that object, not its address: a new batch's tensor can reuse a freed one's memory."""
    cached = _boundaries_cache
    if (cached.get("source") is position_ids and cached["version"] == position_ids._version
            and cached["shape"] == (batch, tokens)):
        return cached["value"]
    value = document_boundaries(position_ids.expand(batch, tokens))
    cached.update(source=position_ids, version=position_ids._version, shape=(batch, tokens), value=value)
    return value


def _kernel_runs(query: torch.Tensor, dropout: float, sliding_window: int | None) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not dropout and sliding_window is None


def _per_document(query, key, value, cu_seqlens, scaling, dropout, sliding_window) -> torch.Tensor:
    """The reference: SDPA over each document of the flattened (tokens, heads, dim) tensors."""
    out = torch.empty_like(query)
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))  # (heads, tokens, dim)
        mask = None
        if sliding_window is not None:
            i = torch.arange(end - start, device=query.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < sliding_window)
        out[start:end] = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None, scale=scaling, enable_gqa=True
        ).transpose(0, 1)
    return out


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: (batch, heads, tokens, dim) in, (batch, tokens, heads, dim) out."""
    if attention_mask is not None or query.shape[2] != key.shape[2]:  # padded batch, or decoding with a cache
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      sliding_window=sliding_window, **kwargs)
    batch, heads, tokens, dim = query.shape
    if position_ids is None:
        position_ids = torch.arange(tokens, device=query.device).expand(batch, tokens)
    cu_seqlens, longest = forward_boundaries(position_ids, batch, tokens)
    flat_q, flat_k, flat_v = (t.transpose(1, 2).reshape(batch * tokens, t.shape[1], dim) for t in (query, key, value))
    if _kernel_runs(query, dropout, sliding_window):
        from torch.nn.attention.varlen import varlen_attn

        groups = heads // key.shape[1]
        if groups > 1:  # grouped-query attention: the kernel takes as many key/value heads as query heads
            flat_k, flat_v = flat_k.repeat_interleave(groups, dim=1), flat_v.repeat_interleave(groups, dim=1)
        out = varlen_attn(flat_q, flat_k, flat_v, cu_seqlens, cu_seqlens, longest, longest, scale=scaling,
                          window_size=(-1, 0))
    else:
        out = _per_document(flat_q, flat_k, flat_v, cu_seqlens, scaling, dropout if module.training else 0.0,
                            sliding_window)
    return out.view(batch, tokens, heads, dim), None


def varlen_mask(batch_size: int, q_length: int, kv_length: int, *args, attention_mask=None, **kwargs):
    """No mask for a batch without padding (the boundaries come from position_ids); SDPA's mask otherwise."""
    if attention_mask is None and q_length == kv_length:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(batch_size, q_length, kv_length, *args, attention_mask=attention_mask, **kwargs)


def register() -> None:
    """Make `attn_implementation="varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
