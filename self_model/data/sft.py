"""SFT data: conversations in any accepted row format -> token ids and labels (only trained tokens carry a label).

Schema of the `sft` kind: `{"messages": [{"role", "content"}, ...]}`, read from OpenAI `messages`, ShareGPT
`conversations`, Alpaca and `input`/`output` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData, share
from self_model.data.conversations import CONVERSATION_KEYS, check_messages, map_messages, row_to_messages
from self_model.data.sources import BadRow, BadRowLog, fingerprints, load_rows
from self_model.errors import DataError
from self_model.template import IGNORE_INDEX, Renderer, encode_conversation


@dataclass
class SFTDataArgs(DataSourceArgs):
    """Conversation data for SFT: row formats, length, which tokens are trained."""

    format: Literal["auto", "messages", "sharegpt", "alpaca", "input_output"] = option(
        "Row format; `auto` detects it from each row's keys.", "auto"
    )
    keys: dict[str, str] = option(
        f"Rename the fields read from rows, e.g. {{messages: dialog, output: answer}}. Valid names: "
        f"{', '.join(CONVERSATION_KEYS)}.",
        {},
    )
    max_length: int = option("Examples longer than this many tokens are truncated (the share is reported).", 1024)
    packing: Literal["auto"] | bool = option(
        "Pack several examples into each max_length sequence (TRL's best-fit packing, padding-free batches, each "
        "example attending only to itself). `auto`: on with a GPU. With packing, per_device_train_batch_size counts "
        "packed sequences of max_length tokens.", "auto")
    train_on: Literal["all_assistant", "last_assistant", "everything"] = option(
        "Which tokens carry loss: every assistant turn, the last one, or the whole text.", "all_assistant"
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.max_length < 8:
            found.append(("data.max_length", f"must be at least 8, got {self.max_length}"))
        for key in sorted(set(self.keys) - set(CONVERSATION_KEYS)):
            found.append((f"data.keys.{key}", f"unknown field name (valid: {', '.join(CONVERSATION_KEYS)})"))
        return found


# ---------------------------------------------------------------- the `sft` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    return {"messages": row_to_messages(row, "auto", keys, check=False)}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {"messages": map_messages(record["messages"], fn)}


def check_record(record: dict) -> None:
    check_messages(record["messages"])


# ---------------------------------------------------------------- building


@dataclass
class SFTStats:
    rows_read: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def lines(self, split: str) -> list[str]:
        return [
            f"[{split}] rows read {self.rows_read}, examples {self.examples}, "
            f"truncated {self.truncated} ({share(self.truncated, self.examples)}), "
            f"dropped with no trained token {self.dropped_no_labels}",
            f"[{split}] tokens {self.tokens}, trained on {self.trained_tokens} ({share(self.trained_tokens, self.tokens)})",
        ]


@dataclass
class BuiltSFT(BuiltData):
    texts: list[str] | None = None  # the rendered text of each training example

    def preview_rows(self) -> list[dict]:
        """Every training example as `text`, `input_ids`, `labels`."""
        return [{"text": text, "input_ids": example["input_ids"], "labels": example["labels"]}
                for text, example in zip(self.texts, self.train)]


def build_sft_data(data: SFTDataArgs, tokenizer, renderer: Renderer, seed: int) -> BuiltSFT:
    """Read, normalise and tokenize the SFT data; return HF datasets with input_ids and labels."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    keys = {**CONVERSATION_KEYS, **data.keys}
    train_rows, eval_rows = load_rows(data, seed, bad)
    built, stats, texts = {}, {}, {}
    for split, rows in ((TRAIN, train_rows), (EVAL, eval_rows)):
        if not rows:
            continue
        conversations = []
        for row in rows:
            try:
                conversations.append(row_to_messages(row.data, data.format, keys))
            except BadRow as err:
                bad.record(row.where, str(err))
        examples, split_stats = encode_all(conversations, tokenizer, renderer, data)
        split_stats.rows_read = len(rows)
        if not examples["input_ids"]:
            raise DataError(f"no usable {split} examples left (rows read: {len(rows)}; {bad.summary() or 'all empty after truncation'})")
        texts[split] = examples.pop("text")
        built[split] = datasets.Dataset.from_dict(examples)
        stats[split] = split_stats
    return BuiltSFT(built[TRAIN], built.get(EVAL), stats, bad, fingerprints(data), texts=texts[TRAIN])


def encode_all(conversations: list, tokenizer, renderer: Renderer, data: SFTDataArgs) -> tuple[dict[str, list], SFTStats]:
    """Encode conversations; drop those left with no trained token after truncation."""
    stats = SFTStats()
    out: dict[str, list] = {"input_ids": [], "labels": [], "text": []}
    for messages in conversations:
        encoded = encode_conversation(messages, tokenizer, renderer, data.train_on, data.max_length)
        trained = sum(label != IGNORE_INDEX for label in encoded.labels)
        if trained == 0:
            stats.dropped_no_labels += 1
            continue
        stats.examples += 1
        stats.truncated += encoded.truncated
        stats.tokens += len(encoded.input_ids)
        stats.trained_tokens += trained
        out["input_ids"].append(encoded.input_ids)
        out["labels"].append(encoded.labels)
        out["text"].append(encoded.text)
    return out, stats
