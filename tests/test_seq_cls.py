"""Sequence classification on the tiny model: label forms, the label map saved with the model, learning a held-out
set well above chance, class weights, and bad labels answered with one message (exit code 2)."""

from __future__ import annotations

import json

import pytest
import torch

from self_model.config import load_config_file
from self_model.data.classification import ClassificationDataArgs, encode_label, label_map
from self_model.data.schemas import SCHEMA_KEYS, detect_kind
from self_model.data.sources import BadRow
from self_model.fine_tuning import train_seq_cls
from tests.helpers import TINY, TINY_MODEL_CONFIG, TINY_TOKENIZER, write_jsonl, write_yaml

CLS_TRAIN, CLS_EVAL = TINY / "data" / "cls_train.jsonl", TINY / "data" / "cls_eval.jsonl"
TOPICS = ["geography", "math", "units", "words"]  # the sorted label names of the sample data


def config(tmp_path, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "eval_before_training": True,
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(CLS_TRAIN), "eval_file": str(CLS_EVAL), "max_length": 32},
        "trace": "none",
        "training_args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 16,
                          "per_device_eval_batch_size": 100, "learning_rate": 3e-3, "max_steps": 12,
                          "warmup_steps": 2, "save_strategy": "no", "seed": 0, "logging_steps": 4},
    }
    for name, value in sections.items():
        values[name] = {**values[name], **value} if isinstance(value, dict) and isinstance(values.get(name), dict) else value
    return values


def load(tmp_path, **sections):
    return load_config_file(train_seq_cls.STAGE, write_yaml(tmp_path / "config.yaml", config(tmp_path, **sections)))


def test_labels_as_names_ids_lists_and_numbers():
    assert detect_kind({"text": "What is 2 + 2?", "label": "math"}, SCHEMA_KEYS) == "classification"
    single = ClassificationDataArgs(labels=["neg", "pos"])
    assert [encode_label(v, ["neg", "pos"], single) for v in ("pos", 0)] == [1, 0]
    multi = ClassificationDataArgs(task="multi_label")
    assert encode_label(["b", 0], ["a", "b", "c"], multi) == [1.0, 1.0, 0.0]
    assert encode_label(2, [], ClassificationDataArgs(task="regression")) == 2.0
    assert label_map([{"label": "b"}, {"label": "a"}], ClassificationDataArgs()) == ["a", "b"]
    assert label_map([{"label": 2}, {"label": 0}], ClassificationDataArgs()) == ["0", "1", "2"]
    for value, args, message in [("maybe", single, "not in the label map"), (5, single, "outside the label map"),
                                 ("a", multi, "must be a list"), (["a"], single, "must be one label"),
                                 ("high", ClassificationDataArgs(task="regression"), "must be a number")]:
        with pytest.raises(BadRow, match=message):
            encode_label(value, ["neg", "pos"] if args is single else ["a", "b"], args)


def test_metrics_of_each_task():
    from types import SimpleNamespace

    def metrics(task, predictions, labels):
        return train_seq_cls.compute_metrics(task)(SimpleNamespace(predictions=predictions, label_ids=labels))

    single = metrics("single_label", [[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], [0, 1, 1])
    assert single == pytest.approx({"accuracy": 2 / 3, "macro_f1": 2 / 3})
    multi = metrics("multi_label", [[1.0, -1.0], [1.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]])
    assert multi == pytest.approx({"accuracy": 0.5, "macro_f1": 0.5})  # label 1: predicted once, never true
    assert metrics("regression", [[1.0], [3.0]], [0.0, 3.0]) == pytest.approx({"mse": 0.5})


def test_balanced_weights_and_the_weighted_loss():
    from types import SimpleNamespace

    import datasets

    cfg = SimpleNamespace(sections={"seq_cls": train_seq_cls.SeqClsArgs(class_weights="balanced")},
                          data=ClassificationDataArgs(), source="x")
    data = SimpleNamespace(id2label={0: "a", 1: "b"}, train=datasets.Dataset.from_dict({"labels": [0, 0, 0, 1]}))
    weights = train_seq_cls.class_weights(cfg, data)
    assert weights == pytest.approx([4 / 6, 2.0])
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    loss = train_seq_cls.weighted_loss("single_label", weights)({"logits": logits}, labels, num_items_in_batch=2)
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights), reduction="sum") / 2
    torch.testing.assert_close(loss, expected)


def test_classifier_learns_held_out_topics_and_saves_the_label_map(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trainer = train_seq_cls.train(load(tmp_path, seq_cls={"class_weights": "balanced"}))
    out = tmp_path / "out"
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["eval_accuracy"] >= 0.7 and metrics["eval_accuracy"] > metrics["eval_accuracy_before"] + 0.3, metrics
    assert metrics["eval_macro_f1"] >= 0.6, metrics

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == dict(enumerate(TOPICS)) and model.config.label2id["math"] == 1
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(out).pad_token_id
    batch = AutoTokenizer.from_pretrained(out)(["What is 3 + 4?", "Convert 2 hours to minutes."], return_tensors="pt",
                                               padding=True)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, trainer.model.eval()(**batch).logits)


def test_lora_classifier_trains_the_head_and_saves_an_adapter_and_a_merged_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    trainer = train_seq_cls.train(load(tmp_path, eval_before_training=False, peft={"enabled": True},
                                       data={"eval_file": f"{CLS_EVAL}#16"}, training_args={"max_steps": 2}))
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and "score" in adapter["modules_to_save"]
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / train_seq_cls.MERGED_DIR).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trainer.model.eval()(ids).logits, rtol=1e-4, atol=1e-5)
    assert merged.config.id2label == dict(enumerate(TOPICS))


@pytest.mark.parametrize("row, change, message", [
    ({"text": "What is 2 + 2?", "label": "sports"}, {"data": {"labels": TOPICS}}, "label 'sports' is not in the label map"),
    ({"label": "math"}, {}, "missing field 'text'"),
])
def test_bad_labels_and_missing_columns_exit_2(tmp_path, capsys, row, change, message):
    bad_eval = write_jsonl(tmp_path / "bad.jsonl", [{"text": "What is 1 + 1?", "label": "math"}, row])
    path = write_yaml(tmp_path / "config.yaml", config(tmp_path, data={"eval_file": str(bad_eval), **change.get("data", {})}))
    with pytest.raises(SystemExit) as exit_info:
        train_seq_cls.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and f"{bad_eval}:2" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()
