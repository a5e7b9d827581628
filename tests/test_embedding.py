"""Embedding models on the tiny model: rows and the retrieval set, held-out recall@1 rising, the saved model
encoding like the trained one, and bad rows answered with one message (exit code 2)."""

from __future__ import annotations

import json

import pytest

from self_model.config import load_config_file
from self_model.data.embedding import EMBEDDING_KEYS, check_record, retrieval_set, to_record
from self_model.data.schemas import SCHEMA_KEYS, detect_kind
from self_model.data.sources import BadRow
from self_model.fine_tuning import train_embedding
from tests.helpers import TINY, TINY_MODEL_CONFIG, TINY_TOKENIZER, write_jsonl, write_yaml

EMB_TRAIN, EMB_EVAL = TINY / "data" / "emb_train.jsonl", TINY / "data" / "emb_eval.jsonl"


def config(tmp_path, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "eval_before_training": True,
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(EMB_TRAIN), "eval_file": f"{EMB_EVAL}#50", "max_length": 32},
        "embedding": {"recall_at": [1, 5]},
        "trace": "none",
        "training_args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 32,
                          "per_device_eval_batch_size": 100, "learning_rate": 3e-3, "max_steps": 10,
                          "warmup_steps": 2, "save_strategy": "no", "seed": 0, "logging_steps": 4},
    }
    for name, value in sections.items():
        values[name] = {**values[name], **value} if isinstance(value, dict) and isinstance(values.get(name), dict) else value
    return values


def test_rows_and_the_retrieval_set():
    assert detect_kind({"query": "q", "positive": "p", "negative": ["n"]}, SCHEMA_KEYS) == "embedding"
    record = to_record({"query": "q", "positive": "p", "negative": "n"}, EMBEDDING_KEYS)
    assert record == {"query": "q", "positive": "p", "negative": ["n"]}
    assert to_record({"query": "q", "positive": "p"}, EMBEDDING_KEYS)["negative"] == []
    with pytest.raises(BadRow, match="missing field 'positive'"):
        to_record({"query": "q"}, EMBEDDING_KEYS)
    with pytest.raises(BadRow, match="the positive is also a negative"):
        check_record({"query": "q", "positive": "p", "negative": ["p"]})
    shared = retrieval_set([{"query": "a", "positive": "x", "negative": ["y"]}, {"query": "b", "positive": "y", "negative": []}])
    assert shared.corpus == {"d0": "x", "d1": "y"} and shared.relevant == {"q0": {"d0"}, "q1": {"d1"}}


def test_training_raises_held_out_recall_and_the_saved_model_encodes_alike(tmp_path):
    from sentence_transformers import SentenceTransformer

    trainer = train_embedding.train(load_config_file(train_embedding.STAGE, write_yaml(tmp_path / "c.yaml", config(tmp_path))))
    out = tmp_path / "out"
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    recall, mrr = "eval_retrieval_cosine_recall@1", "eval_retrieval_cosine_mrr@10"
    assert metrics[recall] >= metrics[f"{recall}_before"] + 0.15, metrics
    assert metrics[mrr] > metrics[f"{mrr}_before"], metrics
    assert trainer.model[1].pooling_mode == "lasttoken"  # auto: a decoder pools its last token

    texts = ["What is 3 + 4?", "3 + 4 = 7."]
    reloaded = SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_tensor=True)
    import torch

    torch.testing.assert_close(reloaded, trainer.model.eval().encode(texts, convert_to_tensor=True))
    torch.testing.assert_close(reloaded.norm(dim=-1), torch.ones(2))


def test_lora_embedding_model_saves_an_adapter(tmp_path):
    train_embedding.train(load_config_file(train_embedding.STAGE, write_yaml(tmp_path / "c.yaml", config(
        tmp_path, eval_before_training=False, peft={"enabled": True}, embedding={"pooling": "mean"},
        data={"eval_file": f"{EMB_EVAL}#8"}, training_args={"max_steps": 2}))))
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "FEATURE_EXTRACTION" and adapter["r"] == 8


@pytest.mark.parametrize("row, data, message", [
    ({"query": "What is 2 + 2?"}, {}, "missing field 'positive'"),
    ({"query": "q", "positive": "p", "negative": []}, {"num_negatives": 1}, "fewer than data.num_negatives"),
])
def test_bad_rows_exit_2(tmp_path, capsys, row, data, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "a", "positive": "b", "negative": ["c"]}, row])
    path = write_yaml(tmp_path / "c.yaml", config(tmp_path, data={"train_file": str(bad), **data}))
    with pytest.raises(SystemExit) as exit_info:
        train_embedding.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and f"{bad}:2" in err and "Traceback" not in err
