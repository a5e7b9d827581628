"""Kinds of data: detection from the keys, conversion of every accepted input shape, empty/one-sided checks."""

from __future__ import annotations

import json
import re

import pytest

from self_model.data.schemas import SCHEMA_KEYS, check_record, detect_kind, map_texts, record_text, to_schema
from self_model.data.sources import BadRow, BadRowLog, iter_source
from tests.helpers import FORMATS, shared_path

USER = {"role": "user", "content": "What is 2 + 2?"}
REPLY = {"role": "assistant", "content": "4."}
WRONG = {"role": "assistant", "content": "5."}
CONVERSATIONAL = {"prompt": [USER], "chosen": [REPLY], "rejected": [WRONG]}


def convert(row: dict, data_source: str | None = None) -> tuple[str, dict]:
    kind = detect_kind(row, SCHEMA_KEYS)
    record = to_schema(row, kind, SCHEMA_KEYS, data_source)
    check_record(record, kind)
    return kind, record


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"text": "A document."}, {"text": "A document."}),
        ({"instruction": "What is 2 + 2?", "output": "4."}, {"messages": [USER, REPLY]}),
        ({"conversations": [{"from": "human", "value": "What is 2 + 2?"}, {"from": "gpt", "value": "4."}]},
         {"messages": [USER, REPLY]}),
        ({"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."},
         {"prompt": "What is 2 + 2?", "chosen": "4.", "rejected": "5."}),
        (CONVERSATIONAL, CONVERSATIONAL),
        ({"conversations": [{"from": "human", "value": "What is 2 + 2?"}],  # LLaMA-Factory dpo_*_demo.json
          "chosen": {"from": "gpt", "value": "4."}, "rejected": {"from": "gpt", "value": "5."}}, CONVERSATIONAL),
        ({"instruction": "What is 2 + 2?", "input": "", "chosen": "4.", "rejected": "5."}, CONVERSATIONAL),
        ({"chosen": [USER, REPLY], "rejected": [USER, WRONG]}, CONVERSATIONAL),  # implicit prompt
        ({"prompt": [USER], "chosen": [USER, REPLY], "rejected": [USER, WRONG]}, CONVERSATIONAL),  # replies repeat the prompt
        ({"question": "What is 2 + 2?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
         {"prompt": [USER], "ground_truth": "4", "data_source": "openai/gsm8k"}),
        ({"prompt": [USER], "reward_model": {"ground_truth": 4, "style": "rule"}, "data_source": "mine"},  # verl parquet rows
         {"prompt": [USER], "ground_truth": "4", "data_source": "mine"}),
    ],
    ids=["text", "alpaca", "sharegpt", "preference-strings", "preference-conversational", "preference-llamafactory",
         "preference-alpaca", "preference-implicit-prompt", "preference-full-replies", "rl-gsm8k", "rl-verl"],
)
def test_inputs_convert_to_the_stage_schema(row, expected):
    _, record = convert(row)
    assert record == expected
    assert json.loads(json.dumps(record)) == expected


def test_detected_kinds():
    kinds = [detect_kind(r, SCHEMA_KEYS) for r in ({"text": "x"}, {"messages": []}, {"chosen": 1, "rejected": 2},
                                                   {"prompt": "x", "ground_truth": "1"}, {"question": "q", "answer": "a"})]
    assert kinds == ["pretrain", "sft", "preference", "rl", "rl"]
    with pytest.raises(BadRow, match="cannot tell the kind"):
        detect_kind({"title": "x"}, SCHEMA_KEYS)


def test_renamed_keys_and_default_data_source():
    keys = {**SCHEMA_KEYS, "prompt": "query", "ground_truth": "label"}
    record = to_schema({"query": "What is 2 + 2?", "label": "4"}, "rl", keys, data_source="arith")
    assert record == {"prompt": [USER], "ground_truth": "4", "data_source": "arith"}


@pytest.mark.parametrize(
    "kind, record, reason",
    [
        ("pretrain", {"text": "  \n"}, "empty text"),
        ("sft", {"messages": [USER]}, "must end with an assistant turn"),
        ("sft", {"messages": [USER, {"role": "assistant", "content": " "}]}, "is empty"),
        ("preference", {"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen equals rejected"),
        ("preference", {"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
        ("preference", {"prompt": [USER], "chosen": [], "rejected": [WRONG]}, "empty chosen"),
        ("preference", {"prompt": [USER, REPLY], "chosen": [REPLY], "rejected": [WRONG]}, "prompt must end with a user turn"),
        ("rl", {"prompt": [USER], "ground_truth": " ", "data_source": "x"}, "empty ground_truth"),
    ],
)
def test_empty_and_one_sided_records_are_named(kind, record, reason):
    with pytest.raises(BadRow, match=re.escape(reason)):
        check_record(record, kind)


@pytest.mark.parametrize(
    "row, kind, reason",
    [
        ({"question": "q", "answer": "no final line"}, "rl", "no final '#### <number>' line"),
        ({"prompt": "q"}, "rl", "missing field 'ground_truth'"),
        ({"prompt": "q", "ground_truth": "1"}, "rl", "missing field 'data_source'"),
        ({"prompt": "q", "chosen": "a"}, "preference", "missing field 'rejected'"),
        ({"text": 3}, "pretrain", "field 'text' must be a string"),
    ],
)
def test_rows_that_do_not_fit_the_schema(row, kind, reason):
    with pytest.raises(BadRow, match=re.escape(reason)):
        to_schema(row, kind, SCHEMA_KEYS)


def test_map_texts_leaves_labels_alone():
    record = {"prompt": [USER], "ground_truth": "4", "data_source": "openai/gsm8k"}
    upper = map_texts(record, "rl", str.upper)
    assert upper == {**record, "prompt": [{"role": "user", "content": "WHAT IS 2 + 2?"}]}
    assert record_text(CONVERSATIONAL, "preference") == "What is 2 + 2?\n4.\n5."


@pytest.mark.parametrize("name, kind", [("alpaca.json", "sft"), ("sharegpt.json", "sft"), ("dpo_sharegpt.json", "preference"),
                                        ("kto.json", "sft"), ("text.jsonl", "pretrain"), ("documents.txt", "pretrain"),
                                        ("gsm8k.jsonl", "rl")])
def test_asset_formats_convert(name, kind):
    rows = list(iter_source(str(FORMATS / name), BadRowLog("fail"), txt_documents="blank_line"))
    assert len(rows) == 24
    records = [convert(row.data) for row in rows]
    assert {k for k, _ in records} == {kind}
    if kind == "preference":
        assert all(r["prompt"][-1]["role"] == "user" and [t["role"] for t in r["chosen"]] == ["assistant"] for _, r in records)
    if kind == "rl":
        assert all(r["data_source"] == "openai/gsm8k" and "," not in r["ground_truth"] for _, r in records)
        assert records[0][1]["ground_truth"] == rows[0].data["answer"].rsplit("#### ", 1)[1].replace(",", "")


@pytest.mark.parametrize("name, kind", [("dpo_en_demo.json", "preference"), ("dpo_zh_demo.json", "preference"),
                                        ("alpaca_zh_demo.json", "sft"), ("c4_demo.jsonl", "pretrain")])
def test_llamafactory_demo_sets_convert(name, kind):
    rows = list(iter_source(str(shared_path("data", "llamafactory", name)), BadRowLog("fail")))
    for row in rows:
        assert convert(row.data)[0] == kind, row.where
    if kind == "preference":
        record = convert(rows[0].data)[1]
        assert record["prompt"][-1]["role"] == "user" and [t["role"] for t in record["chosen"]] == ["assistant"]


def test_gsm8k_rows_become_rl_prompts():
    rows = list(iter_source(str(shared_path("data", "gsm8k", "test.jsonl")), BadRowLog("fail")))
    records = [convert(row.data)[1] for row in rows]
    assert len(records) == 1319 and {r["data_source"] for r in records} == {"openai/gsm8k"}
    assert all(re.fullmatch(r"-?[0-9.]+", r["ground_truth"]) for r in records)
    assert records[0]["ground_truth"] == rows[0].data["answer"].rsplit("#### ", 1)[1].replace(",", "")
