"""Packed, padding-free batches: documents never see each other, whatever the attention; labels are those of the
unpacked examples; CPT blocks carry their documents' boundaries."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from self_model import attention
from self_model.data.sft import SFTDataArgs, build_sft_data
from self_model.data.text import TextDataArgs, block_labels, build_text_data
from self_model.template import IGNORE_INDEX, TEMPLATE_DIR, ChatTemplate
from tests.helpers import SFT_TRAIN, TINY_MODEL_CONFIG, TINY_TOKENIZER, write_jsonl

LENGTHS = [5, 9, 3, 7]


def tiny_model(attn: str, **overrides):
    attention.register()
    config = AutoConfig.from_pretrained(TINY_MODEL_CONFIG, **overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)


def packed_batch(lengths: list[int], seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    docs = [torch.randint(5, 1000, (n,), generator=generator) for n in lengths]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    return docs, torch.cat(docs)[None], position_ids


def test_document_boundaries_from_position_ids():
    _, _, position_ids = packed_batch(LENGTHS)
    cu_seqlens, longest = attention.document_boundaries(position_ids)
    assert cu_seqlens.tolist() == [0, 5, 14, 17, 24] and longest == 9 and cu_seqlens.dtype == torch.int32
    two_rows = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])  # each row starts a document
    assert attention.document_boundaries(two_rows)[0].tolist() == [0, 3, 5, 10]


@pytest.mark.parametrize("attn", ["varlen", "sdpa", "eager"])
def test_packed_forward_and_gradients_equal_per_document(attn):
    """Packed logits and parameter gradients equal those of each document run alone (float32, grouped-query heads)."""
    model = tiny_model(attn)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    docs, ids, position_ids = packed_batch(LENGTHS)
    model.config.use_cache = False  # as load_model sets it for training: transformers' packed masks need it
    packed = model(input_ids=ids, position_ids=position_ids).logits[0]
    packed.square().mean().backward()
    packed_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    alone = torch.cat([model(input_ids=doc[None]).logits[0] for doc in docs])
    alone.square().mean().backward()
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    for got, expected in zip(packed_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    crossing = model(input_ids=ids).logits[0]  # the same row without boundaries: documents see each other
    assert not torch.allclose(crossing, alone, atol=1e-3)


def test_varlen_keeps_documents_apart_even_with_a_cache():
    """A KV cache built during a packed forward turns transformers' packed masks off; varlen does not depend on them."""
    model = tiny_model("varlen").eval()
    docs, ids, position_ids = packed_batch(LENGTHS)
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=position_ids, use_cache=True).logits[0]
        alone = torch.cat([model(input_ids=doc[None]).logits[0] for doc in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


def test_varlen_padded_batches_and_generation_match_sdpa():
    varlen, sdpa = tiny_model("varlen").eval(), tiny_model("sdpa").eval()
    ids = torch.randint(5, 1000, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 8, [0, 0, 0, 1, 1, 1, 1, 1]])  # left padding, as in batched generation
    with torch.no_grad():
        torch.testing.assert_close(varlen(input_ids=ids, attention_mask=mask).logits,
                                   sdpa(input_ids=ids, attention_mask=mask).logits)
        out_varlen = varlen.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        out_sdpa = sdpa.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(out_varlen, out_sdpa)


def test_sliding_window_documents_use_the_reference_path():
    model = tiny_model("varlen", sliding_window=4, use_sliding_window=True, max_window_layers=0).eval()
    docs, ids, position_ids = packed_batch([6, 10])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=position_ids).logits[0]
        alone = torch.cat([model(input_ids=doc[None]).logits[0] for doc in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_kernel_equals_sdpa_per_document_on_gpu(dtype):
    """torch's flash varlen kernel (forward and backward) against SDPA on each document, grouped-query heads."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 512, 3, 1000, 129], 14, 2, 64
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=dtype, generator=generator, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=dtype, generator=generator, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=dtype, generator=generator, requires_grad=True)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).cuda()[None]
    module = torch.nn.Module()
    out, _ = attention.varlen_attention(module, q, k, v, None, scaling=dim**-0.5, position_ids=position_ids)
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    pieces, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        pieces.append(torch.nn.functional.scaled_dot_product_attention(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True, scale=dim**-0.5, enable_gqa=True).transpose(1, 2))
        start += n
    reference = torch.cat(pieces, dim=1)
    reference.float().square().sum().backward()
    torch.testing.assert_close(out.float(), reference.float(), rtol=2e-2, atol=2e-2)
    for got, expected in zip(grads, (q.grad, k.grad, v.grad)):
        assert (got.float() - expected.float()).norm() / expected.float().norm() < 2e-2


# ---------------------------------------------------------------- data


def test_sft_labels_are_identical_packed_and_unpacked():
    """Each example's trained tokens (the labels the loss shifts onto) are the same in TRL's packed, padding-free
    batch as in the example alone; only the first token of each example, which nothing predicts, changes."""
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    template = ChatTemplate.from_file(TEMPLATE_DIR / "qwen2_chatml.json")
    data = build_sft_data(SFTDataArgs(train_file=f"{SFT_TRAIN}#64", max_length=128), tokenizer, template, seed=0)
    examples = data.train.add_column("seq_lengths", [[len(ids)] for ids in data.train["input_ids"]])
    packed = pack_dataset(data.train, 256, "bfd")
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    batch = collator([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    unpacked = {tuple(example["input_ids"]): example["labels"] for example in examples}
    position_ids, ids, labels = batch["position_ids"][0], batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    starts = [i for i, p in enumerate(position_ids.tolist()) if p == 0] + [len(ids)]
    assert len(starts) - 1 == len(examples) == 64
    for start, end in itertools.pairwise(starts):
        original = unpacked[tuple(ids[start:end])]
        assert labels[start] == IGNORE_INDEX and labels[start + 1:end] == original[1:]


def test_cpt_blocks_record_their_documents(tmp_path):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    rows = [{"text": " ".join(["word"] * n)} for n in (3, 30, 7, 12, 50, 2)]
    path = write_jsonl(tmp_path / "docs.jsonl", rows)
    data = build_text_data(TextDataArgs(train_file=str(path), block_size=16), tokenizer, seed=0, preview_blocks=3)
    blocks = [data.train[i] for i in range(len(data.train))]
    assert all(sum(b["seq_lengths"]) == len(b["input_ids"]) for b in blocks)
    assert [len(b["input_ids"]) for b in blocks[:-1]] == [16] * (len(blocks) - 1)
    eos = tokenizer.eos_token_id
    for block in blocks:  # every piece but a block's last ends with its document's EOS
        ends = [sum(block["seq_lengths"][: i + 1]) - 1 for i in range(len(block["seq_lengths"]) - 1)]
        assert all(block["input_ids"][end] == eos for end in ends)
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(blocks[:2])
    expected = [label for block in blocks[:2] for label in block_labels(block, isolate_documents=True)]
    assert batch["labels"][0].tolist() == expected
    assert data.preview[0]["labels"] == block_labels(blocks[0], isolate_documents=True)


def test_boundaries_of_a_new_batch_are_its_own():
    """A new batch's position_ids may sit where a freed batch's were (same address, shape and version counter): the
    boundaries cached for the old batch must not be served for it."""
    storage = torch.tensor([[0, 1, 2, 0, 1]])
    old_batch = storage.view(1, 5)
    assert attention.forward_boundaries(old_batch, 1, 5)[0].tolist() == [0, 3, 5]
    storage.data.copy_(torch.arange(5))  # new content at the same address, the version counter unchanged
    new_batch = storage.view(1, 5)
    assert new_batch.data_ptr() == old_batch.data_ptr() and new_batch._version == old_batch._version
    assert attention.forward_boundaries(new_batch, 1, 5)[0].tolist() == [0, 5]


def test_sdpa_on_a_gpu_turns_the_cudnn_kernel_off(monkeypatch):
    """torch 2.11's cuDNN SDPA backward gives NaN for left-padding rows (GKD's batches), so SDPA runs without it."""
    from types import SimpleNamespace

    from self_model import modeling

    monkeypatch.setattr(modeling, "cuda_available", lambda: True)
    cfg = SimpleNamespace(model=SimpleNamespace(attn_implementation="auto"))
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        assert modeling.attention_for(cfg, packed=True) == attention.VARLEN and torch.backends.cuda.cudnn_sdp_enabled()
        assert modeling.attention_for(cfg, packed=False) == "sdpa" and not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
