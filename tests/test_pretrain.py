"""Continued pretraining: blocks, streaming equals in-memory, loss falls from scratch and from a checkpoint, config rules."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from self_model.config import load_config_file
from self_model.data.text import TextDataArgs, build_text_data
from self_model.errors import ConfigError, DataError
from self_model.pretrain.train_pretrain import STAGE, train
from tests.helpers import TINY, TINY_MODEL_CONFIG, TINY_TOKENIZER, run_script, shared_path, write_jsonl, write_yaml

PRETRAIN_SCRIPT = "self_model/pretrain/train_pretrain.py"
CORPUS = TINY / "data" / "corpus.txt"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def config(tmp_path, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": f"{CORPUS}", "eval_split": 0.05, "block_size": 64},
        "trace": "none",
        "eval_before_training": True,
        "training_args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 16, "learning_rate": 3e-3,
                          "max_steps": 40, "save_strategy": "no", "seed": 0, "logging_steps": 10},
    }
    for name, value in sections.items():
        values[name] = {**values[name], **value} if isinstance(value, dict) and isinstance(values.get(name), dict) else value
    return values


def load(tmp_path, **sections):
    return load_config_file(STAGE, write_yaml(tmp_path / "pretrain.yaml", config(tmp_path, **sections)))


def metrics_of(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["metrics"]


def test_from_scratch_then_from_checkpoint_loss_falls(tmp_path):
    train(load(tmp_path / "a"))
    first = metrics_of(tmp_path / "a" / "out")
    assert first["eval_loss"] < first["eval_loss_before"] - 1.5, first
    assert first["eval_perplexity"] == pytest.approx(torch.tensor(first["eval_loss"]).exp().item(), rel=1e-5)

    train(load(tmp_path / "b", model_name_or_path=str(tmp_path / "a" / "out"), model={"init_from_config": None}))
    second = metrics_of(tmp_path / "b" / "out")
    assert second["eval_loss_before"] == pytest.approx(first["eval_loss"], abs=1e-4)  # it starts where the first ended
    assert second["eval_loss"] < second["eval_loss_before"] - 0.2, second


@pytest.mark.parametrize("isolate", [True, False])
def test_training_batches_keep_documents_apart_unless_asked(tmp_path, monkeypatch, isolate):
    """What the model's forward receives: padding-free rows whose position_ids restart at each document, or (not
    isolated) padded blocks with an attention mask, as run_clm gives."""
    from transformers import Qwen2ForCausalLM

    seen = []
    forward = Qwen2ForCausalLM.forward

    @functools.wraps(forward)  # the trainer reads forward's signature to choose the dataset's columns
    def spy(self, *args, **kwargs):
        seen.append({k: kwargs.get(k) for k in ("position_ids", "attention_mask", "labels")})
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Qwen2ForCausalLM, "forward", spy)
    train(load(tmp_path, data={"isolate_documents": isolate}, training_args={"max_steps": 1, "eval_strategy": "no"},
               eval_before_training=False))
    batch = seen[0]
    if isolate:
        positions = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert batch["attention_mask"] is None and len(starts) > 2
        assert all(batch["labels"][0, i] == -100 for i in starts)  # nothing before a document predicts its start
    else:
        assert batch["attention_mask"] is not None and batch["position_ids"] is None


def test_blocks_cover_every_token_and_the_tail_is_padded_and_masked(tmp_path, tokenizer):
    from transformers import DataCollatorForLanguageModeling

    docs = ["one two three four five six seven", "百 千 万", "eight nine ten"]
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    built = build_text_data(TextDataArgs(train_file=str(path), block_size=8), tokenizer, seed=0)
    expected = [t for d in docs for t in tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
    blocks = [row["input_ids"] for row in built.train]
    assert [t for b in blocks for t in b] == expected  # nothing dropped, documents joined with EOS
    assert all(len(b) == 8 for b in blocks[:-1]) and 0 < len(blocks[-1]) < 8
    assert built.stats["train"].last_block_tokens == len(blocks[-1])

    batch = DataCollatorForLanguageModeling(tokenizer, mlm=False)([built.train[0], built.train[len(blocks) - 1]])
    tail = len(blocks[-1])
    assert batch["labels"][1, tail:].eq(-100).all() and batch["attention_mask"][1, tail:].eq(0).all()
    assert batch["labels"][1, :tail].tolist() == blocks[-1] and batch["labels"][0].tolist() == blocks[0]


def test_streaming_gives_the_same_blocks(tmp_path, tokenizer):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"title": "x", "content": f"row {i} 内容 {i * 7}"} for i in range(50)])
    data = dict(train_file=[str(jsonl), str(CORPUS)], text_fields=["text", "content"], block_size=32)
    in_memory = build_text_data(TextDataArgs(**data), tokenizer, seed=0)
    streamed = build_text_data(TextDataArgs(**data, streaming=True), tokenizer, seed=0)
    expected = [row["input_ids"] for row in in_memory.train]
    got = [row["input_ids"] for row in streamed.train]
    assert got == expected and len(got) > 100


def test_real_text_streams_identically(tokenizer):
    sources = [str(shared_path("data", "llamafactory", "c4_demo.jsonl")), str(shared_path("data", "llamafactory", "wiki_demo.txt"))]
    in_memory = build_text_data(TextDataArgs(train_file=sources, block_size=256), tokenizer, seed=0)
    streamed = build_text_data(TextDataArgs(train_file=sources, block_size=256, streaming=True), tokenizer, seed=0)
    assert in_memory.stats["train"].documents == 330
    assert [r["input_ids"] for r in streamed.train] == [r["input_ids"] for r in in_memory.train]


def test_text_sources_fields_and_conversations(tmp_path, tokenizer):
    txt = tmp_path / "blocks.txt"
    txt.write_text("first line\nsecond line\n\n\nnext document\n", encoding="utf-8")
    rows = write_jsonl(tmp_path / "rows.jsonl", [
        {"body": "from body", "text": "from text"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ])
    built = build_text_data(TextDataArgs(train_file=[str(txt), str(rows)], text_fields=["body", "text"],
                                         txt_documents="blank_line", block_size=512), tokenizer, seed=0)
    text = tokenizer.decode(built.train[0]["input_ids"])
    eos = tokenizer.eos_token
    assert text == f"first line\nsecond line{eos}next document{eos}from body{eos}hi\nhello{eos}"


def test_bad_rows_fail_with_location_or_are_counted(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "good"}\n{"text": \n{"title": "no text"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON"):
        build_text_data(TextDataArgs(train_file=str(path)), tokenizer, seed=0)
    built = build_text_data(TextDataArgs(train_file=str(path), bad_rows="skip"), tokenizer, seed=0)
    assert built.bad_rows.total == 2 and built.stats["train"].documents == 1


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"data": {"streaming": True, "eval_split": 0.0}, "training_args": {"max_steps": -1}}, "training_args.max_steps"),
        ({"data": {"streaming": True}, "training_args": {"max_steps": 5}}, "a streamed corpus cannot be split"),
        ({"data": {"streaming": True, "eval_split": 0.0, "train_file": f"{CORPUS}#10"},
          "training_args": {"max_steps": 5}}, "`#N` sampling reads the whole source"),
        ({"template": "qwen2_chatml"}, "uses no chat template"),
        ({"data": {"max_length": 128}}, "data.max_length: unknown key"),
        ({"data": {"block_sise": 128}}, "did you mean 'block_size'?"),
    ],
)
def test_bad_pretrain_configs(tmp_path, sections, expected):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, **sections)
    assert expected in str(err.value)


def test_streaming_training_and_dry_run_cli(tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"text": "One meter is 100 centimeters."}] * 8)
    sections = {"data": {"streaming": True, "eval_split": 0.0, "eval_file": str(eval_file)}}
    path = write_yaml(tmp_path / "pretrain.yaml", config(tmp_path, **sections))
    dry = run_script(PRETRAIN_SCRIPT, "--config", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "(first blocks of the stream)" in dry.stdout
    preview = [json.loads(line) for line in (tmp_path / "out" / "preview.jsonl").read_text().splitlines()]
    assert len(preview) == 100
    ids, labels = preview[0]["input_ids"], preview[0]["labels"]
    starts = [i for i, label in enumerate(labels) if label == -100]  # isolated documents: nothing predicts a first token
    assert starts[0] == 0 and len(starts) > 1 and all(ids[i - 1] == ids[starts[1] - 1] for i in starts[1:])
    assert all(label in (-100, token) for label, token in zip(labels, ids))
    assert not (tmp_path / "out" / "model.safetensors").exists()

    result = run_script(PRETRAIN_SCRIPT, "--config", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = metrics_of(tmp_path / "out")
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 1.0, metrics
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["data"]["streaming"] is True


def test_lora_with_new_token_embeddings_saved(tmp_path):
    cfg = load(tmp_path, peft={"enabled": True, "lora_r": 8, "target_modules": "all-linear",
                               "modules_to_save": ["embed_tokens"]}, training_args={"max_steps": 20})
    trainer = train(cfg)
    metrics = metrics_of(tmp_path / "out")
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("embed_tokens" in name for name in saved), sorted(saved)[:5]
    assert trainer.model.peft_config["default"].modules_to_save == ["embed_tokens"]
