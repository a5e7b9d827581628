"""process_data end to end: each input format to the stage schemas, bad lines, reports, overwrite, determinism."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from data_process.pipeline import run
from data_process.settings import load_process_settings
from data_process.synthetic import planted_corpus
from self_model.data.sft import SFTDataArgs as DataArgs
from self_model.data.sft import build_sft_data
from self_model.errors import ConfigError, DataError, UserError
from self_model.template import TEMPLATE_DIR, ChatTemplate
from tests.helpers import SHARED, TINY_TOKENIZER, shared_path, write_jsonl

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 + 2?"}
REPLY = {"role": "assistant", "content": "4."}
WRONG = {"role": "assistant", "content": "5."}


def process(tmp_path: Path, inputs: list, name: str = "out", **values):
    """Run the pipeline in this process; returns (destination, report)."""
    flags = {"input": [str(p) for p in inputs], "output_dir": str(tmp_path / name), "processes": 1, "validation_ratio": 0.0}
    flags.update(values)
    settings = load_process_settings(None, [], flags)
    report, _ = run(settings)
    return settings.destination, report


def read_rows(destination: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (destination / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_sft_formats_round_trip(tmp_path):
    """Every SFT input format gives the same messages, which the SFT stage reads back."""
    sharegpt = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "What is 2 + 2?"},
                {"from": "gpt", "value": "4."}]
    alpaca = {"system": "Be brief.", "instruction": "What is 2 + 2?", "input": "", "output": "4."}
    pd.DataFrame([{"messages": [SYSTEM, USER, REPLY]}]).to_parquet(tmp_path / "messages.parquet")
    (tmp_path / "sharegpt.json").write_text(json.dumps([{"conversations": sharegpt}]))
    (tmp_path / "alpaca.json").write_text(json.dumps({"data": [alpaca]}))
    pd.DataFrame([{"system": "Be brief.", "input": "What is 2 + 2?", "output": "4."}]).to_csv(tmp_path / "io.csv", index=False)
    write_jsonl(tmp_path / "messages.jsonl", [{"messages": [SYSTEM, USER, REPLY]}])
    inputs = [tmp_path / name for name in ("messages.parquet", "sharegpt.json", "alpaca.json", "io.csv", "messages.jsonl")]
    for path in inputs:
        destination, report = process(tmp_path, [path], name=f"out-{path.name}")
        assert report.kind == "sft" and read_rows(destination) == [{"messages": [SYSTEM, USER, REPLY]}], path.name

    from transformers import AutoTokenizer

    destination, _ = process(tmp_path, inputs, name="all")
    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    template = ChatTemplate.from_file(TEMPLATE_DIR / "qwen2_chatml.json")
    built = build_sft_data(DataArgs(train_file=str(destination / "train.jsonl")), tokenizer, template, seed=0)
    assert len(built.train) == 5 and built.bad_rows.total == 0


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([{"text": "A first document."}], [{"text": "A first document."}]),
        ([{"conversations": [{"from": "human", "value": "What is 2 + 2?"}], "chosen": {"from": "gpt", "value": "4."},
           "rejected": {"from": "gpt", "value": "5."}}], [{"prompt": [USER], "chosen": [REPLY], "rejected": [WRONG]}]),
        ([{"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}],) * 2,
        ([{"question": "What is 2 + 2?", "answer": "Two and two.\n#### 4"}],
         [{"prompt": [USER], "ground_truth": "4", "data_source": "openai/gsm8k"}]),
    ],
    ids=["pretrain", "preference-llamafactory", "preference-strings", "rl-gsm8k"],
)
def test_other_kinds_round_trip(tmp_path, rows, expected):
    """Each kind is written in its stage schema, and that output read again gives the same rows."""
    destination, _ = process(tmp_path, [write_jsonl(tmp_path / "in.jsonl", rows)])
    assert read_rows(destination) == expected
    again, _ = process(tmp_path, [destination / "train.jsonl"], name="again")
    assert read_rows(again) == expected


def test_text_files_are_one_document_per_line(tmp_path):
    (tmp_path / "corpus.txt").write_text("First document.\n\nSecond\u3000document ，here.\n", encoding="utf-8")
    destination, report = process(tmp_path, [tmp_path / "corpus.txt"])
    assert report.kind == "pretrain"
    assert read_rows(destination) == [{"text": "First document."}, {"text": "Second document ,here."}]


def test_bad_lines_are_counted_and_named(tmp_path):
    lines = ['{"text": "one"}', '{"text": "two', '{"text": "three"}', '{"text": 5}', "", '{"text": "four"}', '["a list"]',
             '{"text": "  "}']
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    destination, _ = process(tmp_path, [path])
    assert [r["text"] for r in read_rows(destination)] == ["one", "three", "four"]
    data = json.loads((destination / "report.json").read_text())
    assert data["rows_in"] == 7 and data["out"] == {"train": 3, "validation": 0}
    assert data["malformed"]["count"] == 1 and f"{path}:2" in json.dumps(data["malformed"])
    assert data["not_in_schema"]["count"] == 2
    reasons = data["not_in_schema"]["by_reason"]
    assert reasons["field 'text' must be a string"]["examples"] == [f"{path}:4"]
    assert reasons["a row must be a JSON object, got list"]["examples"] == [f"{path}:7"]
    assert data["removed"] == {"conversation": 1} and data["examples"]["conversation"][0]["where"] == f"{path}:8"
    report_md = (destination / "report.md").read_text()
    assert f"{path}:2" in report_md and f"{path}:4" in report_md


def test_bad_rows_fail_leaves_nothing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "one"}\n{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'text' must be a string .*bad_rows: skip"):
        process(tmp_path, [path], bad_rows="fail", subdir="pretrain")
    assert list((tmp_path / "out").iterdir()) == []  # no output, no staging folder


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": "first"}])
    destination, _ = process(tmp_path, [first], subdir="pretrain")
    with pytest.raises(UserError, match="already holds output; pass --overwrite"):
        process(tmp_path, [write_jsonl(tmp_path / "b.jsonl", [{"text": "second"}])], subdir="pretrain")
    assert read_rows(destination) == [{"text": "first"}]
    process(tmp_path, [tmp_path / "b.jsonl"], subdir="pretrain", overwrite=True)
    assert read_rows(destination) == [{"text": "second"}]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pretrain"]


def _planted_input(tmp_path: Path, count: int) -> Path:
    docs = planted_corpus(count, seed=3, exact_share=0.1, near_share=0.1, junk_share=0.05)
    return write_jsonl(tmp_path / "planted.jsonl", [{"text": d.text} for d in docs])


FULL = {"dedup": {"exact": True, "near": True}, "redact_pii": ["email", "phone"], "validation_ratio": 0.1, "chunk_size": 40,
        "filters": {"min_chars": 50, "max_repeated_ngram_ratio": 0.5, "max_symbol_ratio": 0.3}}


def test_same_output_with_one_or_two_processes(tmp_path):
    path = _planted_input(tmp_path, 600)
    one, report_one = process(tmp_path, [path], name="one", **FULL)
    two, report_two = process(tmp_path, [path], name="two", **{**FULL, "processes": 2})
    for name in ("train.jsonl", "validation.jsonl"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert report_one.removed == report_two.removed and report_one.examples == report_two.examples
    removed = report_one.removed
    assert removed["exact_dup"] > 40 and removed["near_dup"] > 40 and removed["repeated_ngrams"] > 10


def test_report_accounts_for_every_row(tmp_path):
    destination, _ = process(tmp_path, [_planted_input(tmp_path, 300)], **FULL)
    data = json.loads((destination / "report.json").read_text())
    out = data["out"]["train"] + data["out"]["validation"]
    assert data["rows_in"] == 300 == sum(data["removed"].values()) + out
    assert out == len(read_rows(destination)) + len(read_rows(destination, "validation"))
    assert sum(data["length_histogram"]["out"]) == out and sum(data["length_histogram"]["in"]) == 300
    for step, examples in data["examples"].items():
        assert 0 < len(examples) <= 5 and all(e["where"].startswith(str(tmp_path)) for e in examples), step
    assert all("duplicate_of" in e for e in data["examples"]["near_dup"])
    assert (destination / "length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| near_dup |" in (destination / "report.md").read_text()
    assert data["settings"]["dedup"]["near"] is True


def test_split_is_seeded(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": f"Document number {i}."} for i in range(400)])
    a, _ = process(tmp_path, [path], name="a", validation_ratio=0.2, seed=1)
    b, _ = process(tmp_path, [path], name="b", validation_ratio=0.2, seed=1)
    c, _ = process(tmp_path, [path], name="c", validation_ratio=0.2, seed=2)
    assert read_rows(a, "validation") == read_rows(b, "validation") != read_rows(c, "validation")
    assert 50 <= len(read_rows(a, "validation")) <= 110 and len(read_rows(a)) + len(read_rows(a, "validation")) == 400


def test_settings_errors_name_the_key(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError) as err:
        load_process_settings(None, ["filters.min_char=3", "dedup.threshold=2"], {"input": [str(path)], "kind": "chat"})
    message = str(err.value)
    assert "filters.min_char: unknown key; did you mean 'min_chars'?" in message
    assert "dedup.threshold: must be in (0, 1), got 2.0" in message and "kind: must be one of 'auto'" in message
    with pytest.raises(ConfigError, match="filters.tokenizer: the token-length filters need a tokenizer"):
        load_process_settings(None, ["filters.max_tokens=10"], {"input": [str(path)]})
    with pytest.raises(ConfigError, match="input.*file not found: no/such.jsonl"):
        load_process_settings(None, [], {"input": ["no/such.jsonl"]})


def test_llamafactory_demo_sets(tmp_path):
    files = [shared_path("data", "llamafactory", name) for name in ("alpaca_en_demo.json", "alpaca_zh_demo.json")]
    destination, report = process(tmp_path, files, dedup={"exact": True, "near": True}, validation_ratio=0.05)
    assert report.kind == "sft" and report.rows_read == 1999 and report.removed["exact_dup"] > 0
    rows = read_rows(destination) + read_rows(destination, "validation")
    assert len(rows) == 1999 - sum(report.removed.values())
    assert all(row["messages"][-1]["role"] == "assistant" for row in rows)
    preference, report = process(tmp_path, [shared_path("data", "llamafactory", "dpo_zh_demo.json")], name="dpo")
    assert report.kind == "preference" and report.rows_read == 300
    rows = read_rows(preference)
    assert all(row["chosen"][0]["role"] == "assistant" and row["prompt"][-1]["role"] == "user" for row in rows)


def test_gsm8k_decontamination_finds_planted_test_questions(tmp_path):
    train = shared_path("data", "gsm8k", "train.jsonl").read_text().splitlines()[:500]
    test = (SHARED / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()
    rng = random.Random(0)
    planted = rng.sample(test, 50)
    lines = train + planted
    rng.shuffle(lines)
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    destination, report = process(tmp_path, [tmp_path / "mixed.jsonl"], report_examples=1000,
                                  decontaminate={"eval_files": [str(SHARED / "data" / "gsm8k" / "test.jsonl")]})
    removed = {int(e["where"].rsplit(":", 1)[1]) - 1 for e in report.examples["decontaminate"]}
    planted_lines = {i for i, line in enumerate(lines) if line in planted}
    assert planted_lines <= removed and len(planted_lines) / len(removed) >= 0.95
    assert report.kind == "rl" and len(read_rows(destination)) == 550 - len(removed)
