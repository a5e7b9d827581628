"""Data sources and SFT formats: every format reads to the same messages; bad rows fail or are counted."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from self_model.data.conversations import row_to_messages
from self_model.data.sft import SFTDataArgs as DataArgs
from self_model.data.sft import build_sft_data
from self_model.data.sources import BadRowLog, read_source
from self_model.errors import DataError
from self_model.modeling import set_distinct_pad_token
from self_model.template import TEMPLATE_DIR, ChatTemplate
from tests.helpers import FORMATS, shared_path, write_jsonl

KEYS = {k: k for k in ("messages", "conversations", "system", "instruction", "input", "output", "history")}
EXPECTED = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi\nthere"},
    {"role": "assistant", "content": "Hello."},
]


@pytest.mark.parametrize(
    "row",
    [
        {"messages": EXPECTED},
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi\nthere"},
                           {"from": "gpt", "value": "Hello."}]},
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "Hi\nthere"}, {"from": "gpt", "value": "Hello."}]},
        {"system": "Be brief.", "instruction": "Hi", "input": "there", "output": "Hello."},
        {"system": "Be brief.", "input": "Hi\nthere", "output": "Hello."},
    ],
    ids=["messages", "sharegpt", "sharegpt-system", "alpaca", "input_output"],
)
def test_formats_normalise_to_the_same_messages(row):
    assert row_to_messages(row, "auto", KEYS) == EXPECTED


def test_alpaca_history_and_custom_keys():
    row = {"q": "And 3?", "a": "9.", "hist": [["Square of 2?", "4."]]}
    keys = {**KEYS, "instruction": "q", "output": "a", "history": "hist"}
    assert row_to_messages(row, "alpaca", keys) == [
        {"role": "user", "content": "Square of 2?"}, {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3?"}, {"role": "assistant", "content": "9."},
    ]


def test_bad_rows_fail_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "a", "output": "b"}\n{"input": "a", "output": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d\.jsonl:2: malformed JSON .*bad_rows: skip"):
        read_source(str(path), BadRowLog("fail"))


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "turn 2 (assistant) is empty"),
        ({"instruction": "hi"}, "missing field 'output'"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "must end with an assistant turn"),
        ({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, "expected 'user'"),
        ({"text": "plain"}, "cannot tell the format"),
        (["not", "an", "object"], "must be a JSON object"),
    ],
)
def test_bad_row_reasons(row, reason):
    from self_model.data.sources import BadRow

    with pytest.raises(BadRow, match=re.escape(reason)):
        row_to_messages(row, "auto", KEYS)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tests.helpers import TINY_TOKENIZER

    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    set_distinct_pad_token(tok)
    return tok


def qwen_template():
    return ChatTemplate.from_file(TEMPLATE_DIR / "qwen2_chatml.json")


def test_skip_counts_bad_rows_and_reports_them(tmp_path, tokenizer):
    good = {"input": "What is 1 + 1?", "output": "2."}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good), "{broken", json.dumps({"input": "x"}), json.dumps(good)]) + "\n")
    data = build_sft_data(DataArgs(train_file=str(path), bad_rows="skip"), tokenizer, qwen_template(), seed=0)
    assert len(data.train) == 2
    assert data.bad_rows.total == 2
    summary = data.bad_rows.summary()
    assert "mixed.jsonl:2" in summary and "mixed.jsonl:3" in summary and "missing field 'output'" in summary
    with pytest.raises(DataError, match=r"mixed\.jsonl:2"):
        build_sft_data(DataArgs(train_file=str(path)), tokenizer, qwen_template(), seed=0)


def test_file_types_sampling_mixing_and_split(tmp_path, tokenizer):
    rows = [{"input": f"Say {i}.", "output": f"{i}."} for i in range(20)]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    for name in ("a.jsonl", "b.json", "c.parquet", "d.csv"):
        loaded = read_source(str(tmp_path / name), BadRowLog("fail"))
        assert [r.data["output"] for r in loaded] == [r["output"] for r in rows], name
    sampled = read_source(f"{jsonl}#5", BadRowLog("fail"), seed=3)
    assert len(sampled) == 5 and sampled == read_source(f"{jsonl}#5", BadRowLog("fail"), seed=3)
    assert len(read_source(f"{jsonl}#50", BadRowLog("fail"))) == 50  # oversampling repeats rows
    mixed = DataArgs(train_file=[f"{jsonl}#10", str(tmp_path / "c.parquet")], eval_split=0.25)
    data = build_sft_data(mixed, tokenizer, qwen_template(), seed=0)
    assert len(data.train) + len(data.eval) == 30 and len(data.eval) == 8
    assert data.stats["train"].rows_read == 22


def test_truncation_is_reported(tmp_path, tokenizer):
    rows = [{"input": "word " * 200, "output": "ok"}, {"input": "short", "output": "answer " * 100}, {"input": "a", "output": "b"}]
    data = build_sft_data(DataArgs(train_file=str(write_jsonl(tmp_path / "t.jsonl", rows)), max_length=64),
                          tokenizer, qwen_template(), seed=0)
    stats = data.stats["train"]
    # the first row loses its whole answer to truncation and is dropped; the second is cut but kept
    assert stats.dropped_no_labels == 1 and stats.examples == 2 and stats.truncated == 1
    assert max(len(ids) for ids in data.train["input_ids"]) == 64


def test_missing_dataset_id_is_a_clear_error(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not a local file and could not be loaded as a dataset id"):
        read_source("someone/no-such-dataset", BadRowLog("fail"))


@pytest.mark.parametrize("name", ["alpaca.json", "sharegpt.json"])
def test_sft_formats_in_assets(name, tokenizer):
    data = build_sft_data(DataArgs(train_file=str(FORMATS / name), max_length=256), tokenizer, qwen_template(), seed=0)
    assert len(data.train) == 24 and data.bad_rows.total == 0
    assert 0 < data.stats["train"].trained_tokens < data.stats["train"].tokens
    texts = data.preview_rows()
    own_system = [row for row in texts if "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" not in row["text"]]
    assert bool(own_system) == (name == "sharegpt.json")  # the rows' own system turns replace the default
    assert any(row["text"].count("<|im_start|>assistant") > 1 for row in texts)  # history / several exchanges


@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "alpaca_zh_demo.json", "identity.json"])
def test_llamafactory_demo_sets(name, tokenizer):
    path = shared_path("data", "llamafactory", name)
    data = build_sft_data(DataArgs(train_file=f"{path}#64", max_length=512), tokenizer, qwen_template(), seed=0)
    assert len(data.train) == 64 and data.bad_rows.total == 0
    assert 0 < data.stats["train"].trained_tokens < data.stats["train"].tokens
