"""RL prompts: rows -> {prompt, ground_truth, data_source} records -> verl's parquet rows or a TRL dataset.

verl's RLHFDataset reads `data_source, prompt (messages), ability, reward_model{style, ground_truth}, extra_info`
(the schema of verl's examples/data_preprocess/gsm8k.py); TRL's GRPOTrainer reads `prompt` plus the columns our
reward adapter passes on (`ground_truth`, `data_source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from self_model.data import BadRow, BadRowLog, as_list, fingerprint, load_rows
from self_model.errors import DataError
from self_model.rlhf.rl_config import RLDataArgs
from self_model.schemas import SCHEMA_KEYS, to_schema
from self_model.templates import IGNORE_INDEX


def to_record(row: Any, data: RLDataArgs) -> dict:
    """One row -> {"prompt": [messages, user last], "ground_truth": str, "data_source": str}."""
    keys = {**SCHEMA_KEYS, "prompt": data.prompt_key, "ground_truth": data.ground_truth_key}
    record = to_schema(row, "rl", keys, data.data_source)
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
class BuiltPrompts:
    records: dict[str, list[dict]]
    stats: dict[str, PromptStats]
    bad_rows: BadRowLog
    fingerprints: dict[str, str]
    preview: list[dict] = field(default_factory=list)

    def preview_rows(self, tokenizer) -> list[dict]:
        return self.preview

    def manifest(self) -> dict:
        return {"fingerprints": self.fingerprints, "stats": {s: vars(v) for s, v in self.stats.items()},
                "skipped_rows": dict(self.bad_rows.counts)}

    def write_parquet(self, folder: Path) -> dict[str, str]:
        """verl's parquet files, one per split; returns split -> path."""
        import pandas as pd

        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for split, records in self.records.items():
            path = folder / f"{split}.parquet"
            pd.DataFrame([verl_row(r, i, split) for i, r in enumerate(records)]).to_parquet(path)
            paths[split] = str(path)
        return paths

    def dataset(self, split: str):
        import datasets

        return datasets.Dataset.from_list(self.records[split]) if split in self.records else None


def build_prompts(data: RLDataArgs, tokenizer, max_prompt_length: int, seed: int, preview_examples: int) -> BuiltPrompts:
    """Read and convert the prompts; those longer than max_prompt_length (chat template applied) are left out."""
    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    records, stats, preview = {}, {}, []
    for split, rows in (("train", train_rows), ("validation", eval_rows)):
        if not rows:
            continue
        kept, split_stats = [], PromptStats(rows_read=len(rows), max_prompt_length=max_prompt_length)
        for row in rows:
            try:
                record = to_record(row.data, data)
            except BadRow as err:
                bad.record(row.where, str(err))
                continue
            ids = tokenizer.apply_chat_template(record["prompt"], add_generation_prompt=True, tokenize=True,
                                                return_dict=True)["input_ids"]
            if len(ids) > max_prompt_length:
                split_stats.too_long += 1
                continue
            kept.append(record)
            if split == "train" and len(preview) < preview_examples:
                preview.append({"title": f"prompt {len(preview)} (ground truth {record['ground_truth']!r}, "
                                         f"{record['data_source']})", "text": tokenizer.decode(ids), "input_ids": ids,
                                "labels": [IGNORE_INDEX] * len(ids)})
        if not kept:
            raise DataError(f"no usable {split} prompts (rows read {len(rows)}, too long {split_stats.too_long}; "
                            f"{bad.summary() or 'raise rl.rollout.max_prompt_length'})")
        split_stats.prompts = len(kept)
        records[split], stats[split] = kept, split_stats
    fingerprints = {spec: fingerprint(spec) for spec in as_list(data.train_file) + as_list(data.eval_file)}
    return BuiltPrompts(records, stats, bad, fingerprints, preview)
