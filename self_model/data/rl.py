"""RL prompts: rows -> {prompt, ground_truth, data_source} records -> verl's parquet rows or a TRL dataset.

Schema of the `rl` kind: `{"prompt": [messages], "ground_truth": str, "data_source": str}` (verl's fields). Read from
`prompt` (string or messages) with `ground_truth` or verl's `reward_model.ground_truth`, and GSM8K
`question`/`answer` rows (the number after `####` is the ground truth, data_source `openai/gsm8k`).

verl's RLHFDataset reads `data_source, prompt (messages), ability, reward_model{style, ground_truth}, extra_info`
(the schema of verl's examples/data_preprocess/gsm8k.py); TRL's GRPOTrainer reads `prompt` plus the columns our
reward adapter passes on (`ground_truth`, `data_source`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData
from self_model.data.conversations import as_turns, check_turns, map_messages
from self_model.data.sources import BadRow, BadRowLog, fingerprints, load_rows
from self_model.errors import DataError
from self_model.template import IGNORE_INDEX

RL_KEYS = {k: k for k in ("prompt", "ground_truth", "data_source", "question", "answer")}
GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")  # verl's examples/data_preprocess/gsm8k.py
GSM8K_SOURCE = "openai/gsm8k"


@dataclass
class RLDataArgs(DataSourceArgs):
    """Prompts with a checkable answer: `prompt` (text or messages), `ground_truth`, `data_source`; GSM8K rows too."""

    prompt_key: str = option("Field with the prompt: a string or a list of messages.", "prompt")
    ground_truth_key: str = option("Field with the answer the reward functions check.", "ground_truth")
    data_source: str | None = option("data_source for rows that have none (GSM8K rows get openai/gsm8k).", None)
    prompt_suffix: str = option("Text added to the end of every prompt, e.g. how to state the final answer.", "")


# ---------------------------------------------------------------- the `rl` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    source = row.get(keys["data_source"]) or data_source
    if keys["prompt"] in row:
        turns = as_turns(row[keys["prompt"]], keys["prompt"], "user")
        reward_model = row.get("reward_model")
        truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else row.get(keys["ground_truth"])
    elif keys["question"] in row and keys["answer"] in row:
        question, answer = row[keys["question"]], row[keys["answer"]]
        if not (isinstance(question, str) and isinstance(answer, str)):
            raise BadRow(f"fields {keys['question']!r} and {keys['answer']!r} must be strings")
        match = GSM8K_ANSWER.search(answer)
        if match is None:
            raise BadRow(f"field {keys['answer']!r} has no final '#### <number>' line")
        turns, truth, source = [{"role": "user", "content": question}], match[1].replace(",", ""), source or GSM8K_SOURCE
    else:
        raise BadRow(f"missing field {keys['prompt']!r} (or {keys['question']!r} and {keys['answer']!r})")
    if isinstance(truth, bool) or not isinstance(truth, (str, int, float)):
        raise BadRow(f"missing field {keys['ground_truth']!r} (a string or number)")
    if not isinstance(source, str) or not source:
        raise BadRow(f"missing field {keys['data_source']!r} (or set data_source in the config)")
    return {"prompt": turns, "ground_truth": str(truth), "data_source": source}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {**record, "prompt": map_messages(record["prompt"], fn)}


def check_record(record: dict) -> None:
    check_turns(record["prompt"], "prompt", last_role="user")
    if not record["ground_truth"].strip():
        raise BadRow("empty ground_truth")


# ---------------------------------------------------------------- building


def row_to_prompt(row: Any, data: RLDataArgs) -> dict:
    """One row -> {"prompt": [messages, user last], "ground_truth": str, "data_source": str}, with the prompt suffix."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    keys = {**RL_KEYS, "prompt": data.prompt_key, "ground_truth": data.ground_truth_key}
    record = to_record(row, keys, data.data_source)
    if not any(turn["content"].strip() for turn in record["prompt"]):
        raise BadRow(f"empty {data.prompt_key!r}: a prompt needs text to generate from")
    if not record["ground_truth"].strip():
        raise BadRow(f"empty {data.ground_truth_key!r}")
    if record["prompt"][-1]["role"] != "user":
        raise BadRow("the prompt must end with a user turn")
    if data.prompt_suffix:
        last = record["prompt"][-1]
        record["prompt"] = [*record["prompt"][:-1], {**last, "content": last["content"] + data.prompt_suffix}]
    return record


def verl_row(record: dict, index: int, split: str) -> dict:
    """A record in verl's parquet schema."""
    return {"data_source": record["data_source"], "prompt": record["prompt"],
            "ability": "math" if "gsm8k" in record["data_source"] or "math" in record["data_source"] else "general",
            "reward_model": {"style": "rule", "ground_truth": record["ground_truth"]},
            "extra_info": {"split": split, "index": index}}


@dataclass
class PromptStats:
    rows_read: int = 0
    prompts: int = 0
    too_long: int = 0
    max_prompt_length: int = 0

    def lines(self, split: str) -> list[str]:
        return [f"[{split}] rows read {self.rows_read}, prompts {self.prompts}, longer than rollout.max_prompt_length "
                f"({self.max_prompt_length}) and left out {self.too_long}"]


@dataclass
class BuiltPrompts(BuiltData):
    """`train` and `eval` are lists of records."""

    def write_parquet(self, folder: Path) -> dict[str, str]:
        """verl's parquet files, one per split; returns split -> path."""
        import pandas as pd

        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, records in ((TRAIN, self.train), (EVAL, self.eval)):
            if records:
                path = folder / f"{split}.parquet"
                pd.DataFrame([verl_row(r, i, split) for i, r in enumerate(records)]).to_parquet(path)
                paths[split] = str(path)
        return paths

    def dataset(self, split: str):
        """A split as a Hugging Face dataset (None when absent)."""
        import datasets

        records = self.train if split == TRAIN else self.eval
        return datasets.Dataset.from_list(records) if records else None


def build_prompts(data: RLDataArgs, tokenizer, max_prompt_length: int, seed: int, preview_examples: int) -> BuiltPrompts:
    """Read and convert the prompts; those longer than max_prompt_length (chat template applied) are left out."""
    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    records, stats, preview = {}, {}, []
    for split, rows in ((TRAIN, train_rows), (EVAL, eval_rows)):
        if not rows:
            continue
        kept, split_stats = [], PromptStats(rows_read=len(rows), max_prompt_length=max_prompt_length)
        for row in rows:
            try:
                record = row_to_prompt(row.data, data)
            except BadRow as err:
                bad.record(row.where, str(err))
                continue
            ids = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            if len(ids) > max_prompt_length:
                split_stats.too_long += 1
                continue
            kept.append(record)
            if split == TRAIN and len(preview) < preview_examples:
                preview.append({"title": f"prompt {len(preview)} (ground truth {record['ground_truth']!r}, "
                                         f"{record['data_source']})", "text": tokenizer.decode(ids), "input_ids": ids,
                                "labels": [IGNORE_INDEX] * len(ids)})
        if not kept:
            raise DataError(f"no usable {split} prompts (rows read {len(rows)}, too long {split_stats.too_long}; "
                            f"{bad.summary() or 'raise rl.rollout.max_prompt_length'})")
        split_stats.prompts = len(kept)
        records[split], stats[split] = kept, split_stats
    return BuiltPrompts(records[TRAIN], records.get(EVAL), stats, bad, fingerprints(data), preview)
