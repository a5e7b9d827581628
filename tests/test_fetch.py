"""fetch_dataset.py: hub datasets and local files to JSONL per split; no network gives a clear message and no files."""

from __future__ import annotations

import json

import datasets
import pytest

from data_process.fetch import fetch, output_name
from self_model.errors import DataError, UserError
from tests.helpers import run_script

SCRIPT = "data_process/fetch_dataset.py"


def test_no_network_is_a_clear_message_and_writes_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/some-set' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"someone/some-set: could not load it from the Hugging Face hub \(ConnectionError"):
        fetch("someone/some-set", "finetune", str(tmp_path / "fetch_data"), "huggingface", None, None, False)
    assert not (tmp_path / "fetch_data").exists()


def test_offline_command_exits_2(tmp_path):
    output_dir = tmp_path / "fetch_data"
    result = run_script(SCRIPT, "--dataset_name", "someone/no-such-set", "--data_subdir", "sft", "--output_dir", str(output_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "someone/no-such-set: could not load it from the Hugging Face hub" in result.stderr
    assert "HF_HUB_OFFLINE is set" in result.stderr and "Nothing was written" in result.stderr
    assert not output_dir.exists()


def test_every_split_is_written(tmp_path, monkeypatch):
    train = [{"question": "一加一？", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    loaded = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list([{"question": "3+3?", "answer": "#### 6"}])
    })
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: calls.append((args, kwargs)) or loaded)
    written = fetch("openai/gsm8k", "grpo", str(tmp_path), "huggingface", "main", None, False)
    assert calls == [(("openai/gsm8k", "main"), {"split": None})]
    names = {"train": "openai_gsm8k_main__train.jsonl", "test": "openai_gsm8k_main__test.jsonl"}
    assert {path.name: rows for path, rows in written.items()} == {names["train"]: 2, names["test"]: 1}
    text = (tmp_path / "grpo" / names["train"]).read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == train
    assert "一加一" in text  # written as UTF-8, not \u escapes
    with pytest.raises(UserError, match="already exist; pass --overwrite"):
        fetch("openai/gsm8k", "grpo", str(tmp_path), "huggingface", "main", None, False)
    assert fetch("openai/gsm8k", "grpo", str(tmp_path), "huggingface", "main", None, True)
    assert sorted(p.name for p in (tmp_path / "grpo").iterdir()) == sorted(names.values())  # no staging folder left


def test_local_file(tmp_path):
    source = tmp_path / "my_set.json"
    source.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}]))
    written = fetch(str(source), "finetune", str(tmp_path / "out"), "huggingface", None, None, False)
    (path, rows), = written.items()
    assert path == tmp_path / "out" / "finetune" / "my_set__train.jsonl" and rows == 1
    assert json.loads(path.read_text()) == {"instruction": "Hi", "output": "Hello"}


def test_modelscope_needs_its_package(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails as when it is not installed
    with pytest.raises(UserError, match="needs the modelscope package"):
        fetch("org/name", "finetune", str(tmp_path), "modelscope", None, None, False)


def test_output_names():
    assert output_name("openai/gsm8k", None, "train") == "openai_gsm8k__train.jsonl"
    assert output_name("imdb", "plain_text", "test") == "imdb_plain_text__test.jsonl"
