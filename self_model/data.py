"""Read data sources (files, dataset ids, `name#N` sampling), normalise rows, and build SFT examples.

`iter_source` streams a source row by row (JSONL, TXT, Parquet, CSV; a .json file is one list and is read whole);
`read_source` collects it and applies `#N` sampling.

Every row carries its location (`file:line`) so a bad row is reported where the user can find it.
With `bad_rows: fail` the first bad row stops the run; with `skip` rows are counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from self_model.config import DataArgs, DataSourceArgs
from self_model.errors import DataError
from self_model.templates import IGNORE_INDEX, Renderer, encode_conversation

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}
SAMPLE_SUFFIX = re.compile(r"^(?P<path>.+?)#(?P<n>\d+)$")
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
DEFAULT_KEYS = {k: k for k in ("messages", "conversations", "system", "instruction", "input", "output", "history")}


class BadRow(Exception):
    """A row that cannot become an example; the message says why."""


@dataclass
class Row:
    data: Any
    where: str


@dataclass
class BadRowLog:
    """Skipped rows by reason, with the first few locations of each."""

    policy: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3
    fix_hint: str = "set data.bad_rows: skip to count and skip such rows"

    def record(self, where: str, reason: str) -> None:
        if self.policy == "fail":
            raise DataError(f"{where}: {reason} (fix the row, or {self.fix_hint})")
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        lines = [f"skipped {n} bad rows: {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------- sources


def split_spec(spec: str) -> tuple[str, int | None]:
    """`path#N` -> (path, N); plain `path` -> (path, None)."""
    match = SAMPLE_SUFFIX.match(spec)
    return (match["path"], int(match["n"])) if match else (spec, None)


def _read_jsonl(path: Path, bad: BadRowLog) -> Iterator[Row]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Row(json.loads(line), f"{path}:{number}")
            except json.JSONDecodeError as err:
                bad.record(f"{path}:{number}", f"malformed JSON ({err.msg})")


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); a .json file must hold one list of rows") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows (use .jsonl for one row per line)")
    for index, item in enumerate(data):
        yield Row(item, f"{path}[{index}]")


def _read_table(path: Path, kind: str) -> Iterator[Row]:
    """Parquet and CSV rows, read in batches so a large file need not fit in memory."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        index = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield Row(record, f"{path}:row {index}")
                index += 1
        return
    import pandas as pd

    index = 2  # line 1 is the header
    for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=4096):
        for record in chunk.to_dict(orient="records"):
            yield Row(record, f"{path}:row {index}")
            index += 1


def _read_txt(path: Path, documents: str) -> Iterator[Row]:
    """Plain text as `{"text": document}` rows: one per non-empty line, or per block of lines separated by blank lines."""
    with path.open(encoding="utf-8") as handle:
        block, start = [], 0
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if documents == "line":
                if line.strip():
                    yield Row({"text": line}, f"{path}:{number}")
            elif line.strip():
                block, start = block + [line], start or number
            elif block:
                yield Row({"text": "\n".join(block)}, f"{path}:{start}")
                block, start = [], 0
        if block:
            yield Row({"text": "\n".join(block)}, f"{path}:{start}")


def _read_hub(name: str, streaming: bool = False) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train", streaming=streaming)
    except Exception as err:  # no network, unknown name, missing config: all end the same way for the user
        raise DataError(
            f"{name}: not a local file and could not be loaded as a dataset id ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Check the path, or download the dataset first."
        ) from None
    for index, record in enumerate(dataset):
        yield Row(record, f"{name}[{index}]")


def iter_source(name: str, bad: BadRowLog, txt_documents: str = "line", streaming: bool = False) -> Iterator[Row]:
    """The rows of one local file or dataset id, in order, read lazily where the format allows; malformed JSONL lines go to `bad`."""
    path = Path(name)
    if path.is_file():
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json, .parquet, .csv or .txt)")
        if kind == "txt":
            yield from _read_txt(path, txt_documents)
        elif kind == "json":
            yield from _read_jsonl(path, bad) if path.suffix.lower() == ".jsonl" else _read_json(path)
        else:
            yield from _read_table(path, kind)
    elif path.exists():
        raise DataError(f"{path}: is a directory; name the data files inside it")
    else:
        yield from _read_hub(name, streaming)


def read_source(spec: str, bad: BadRowLog, seed: int = 0, txt_documents: str = "line") -> list[Row]:
    """All rows of one source; `#N` draws N rows with a fixed seed (repeating rows when N exceeds the size)."""
    name, count = split_spec(spec)
    rows = list(iter_source(name, bad, txt_documents))
    if not rows:
        raise DataError(f"{name}: no rows")
    if count is not None:
        rng = random.Random(seed)
        if count <= len(rows):
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), count))]
        else:
            rows = rows * (count // len(rows)) + [rows[i] for i in sorted(rng.sample(range(len(rows)), count % len(rows)))]
    return rows


def fingerprint(spec: str) -> str:
    """A content hash of a local source (sha256 of its bytes), or the spec itself for a dataset id."""
    name, _ = split_spec(spec)
    path = Path(name)
    if not path.is_file():
        return f"dataset-id:{spec}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def as_list(specs: str | list[str] | None) -> list[str]:
    return [] if not specs else [specs] if isinstance(specs, str) else list(specs)


# ---------------------------------------------------------------- SFT rows -> messages


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise BadRow(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def parse_turn(item: Any, field_name: str) -> dict[str, str]:
    """One message, OpenAI (`role`/`content`) or ShareGPT (`from`/`value`) style, as {role, content}."""
    if isinstance(item, dict) and "role" in item and "content" in item:
        role_key, content_key = "role", "content"
    elif isinstance(item, dict) and "from" in item and "value" in item:
        role_key, content_key = "from", "value"
    else:
        raise BadRow(f"each turn in {field_name!r} needs 'role' and 'content' (or 'from' and 'value')")
    role = ROLE_ALIASES.get(str(item[role_key]).lower())
    if role is None:
        raise BadRow(f"unknown role {item[role_key]!r} (use system, user/human or assistant/gpt)")
    if not isinstance(item[content_key], str):
        raise BadRow(f"turn content must be a string, got {type(item[content_key]).__name__}")
    return {"role": role, "content": item[content_key]}


def parse_turns(items: Any, field_name: str) -> list[dict[str, str]]:
    if not isinstance(items, list) or not items:
        raise BadRow(f"field {field_name!r} must be a non-empty list of turns")
    return [parse_turn(item, field_name) for item in items]


def detect_format(row: dict, keys: dict[str, str]) -> str:
    if keys["messages"] in row:
        return "messages"
    if keys["conversations"] in row:
        return "sharegpt"
    if keys["instruction"] in row:
        return "alpaca"
    if keys["input"] in row or keys["output"] in row:
        return "input_output"
    raise BadRow(f"cannot tell the format from its keys {sorted(row)[:8]} (set data.format and data.keys)")


def row_to_messages(row: Any, data_format: str, keys: dict[str, str], check: bool = True) -> list[dict[str, str]]:
    """One row in any supported SFT format -> an OpenAI-style message list, checked unless `check` is False."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    fmt = detect_format(row, keys) if data_format == "auto" else data_format
    if fmt == "messages":
        messages = parse_turns(row.get(keys["messages"]), keys["messages"])
    elif fmt == "sharegpt":
        messages = parse_turns(row.get(keys["conversations"]), keys["conversations"])
    elif fmt == "alpaca":
        messages = alpaca_prompt(row, keys) + [{"role": "assistant", "content": _text(row, keys["output"])}]
    else:
        messages = [
            {"role": "user", "content": _text(row, keys["input"])},
            {"role": "assistant", "content": _text(row, keys["output"])},
        ]
    messages = with_system(messages, row, keys)
    if check:
        check_messages(messages)
    return messages


def alpaca_prompt(row: dict, keys: dict[str, str]) -> list[dict[str, str]]:
    """An Alpaca row's `history` pairs, then its instruction (and input) as the last user turn."""
    instruction, extra = _text(row, keys["instruction"]), _text(row, keys["input"], required=False)
    messages = []
    for pair in row.get(keys["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise BadRow(f"field {keys['history']!r} must be a list of [user, assistant] string pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction})
    return messages


def with_system(messages: list[dict[str, str]], row: dict, keys: dict[str, str]) -> list[dict[str, str]]:
    """`messages` led by the row's `system` string, unless they already start with a system turn."""
    system = row.get(keys["system"])
    if isinstance(system, str) and system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def check_messages(messages: list[dict[str, str]], last: str = "assistant") -> None:
    """System first (optional), then user/assistant alternating, ending with `last`; no empty turns."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise BadRow(f"turn {index + 1} is {message['role']!r}, expected {expected!r} (turns must alternate user/assistant)")
        if not message["content"].strip():
            raise BadRow(f"turn {index + 1} ({message['role']}) is empty")
    if not body or body[-1]["role"] != last:
        raise BadRow(f"the conversation must end with {'an' if last == 'assistant' else 'a'} {last} turn")


# ---------------------------------------------------------------- datasets


@dataclass
class DataStats:
    rows_read: int = 0
    examples: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    tokens: int = 0
    trained_tokens: int = 0

    def lines(self, split: str) -> list[str]:
        share = lambda a, b: f"{100 * a / b:.1f}%" if b else "n/a"  # noqa: E731
        return [
            f"[{split}] rows read {self.rows_read}, examples {self.examples}, "
            f"truncated {self.truncated} ({share(self.truncated, self.examples)}), "
            f"dropped with no trained token {self.dropped_no_labels}",
            f"[{split}] tokens {self.tokens}, trained on {self.trained_tokens} ({share(self.trained_tokens, self.tokens)})",
        ]


@dataclass
class BuiltData:
    train: Any
    eval: Any | None
    stats: dict[str, DataStats]
    bad_rows: BadRowLog
    fingerprints: dict[str, str]
    texts: dict[str, list[str]]

    def preview_rows(self, tokenizer) -> list[dict]:
        """Every training example as `text`, `input_ids`, `labels` (the dry run's preview.jsonl)."""
        return [{"text": text, "input_ids": example["input_ids"], "labels": example["labels"]}
                for text, example in zip(self.texts["train"], self.train)]

    def manifest(self) -> dict:
        """What the run manifest records about the data."""
        return {
            "fingerprints": self.fingerprints,
            "stats": {split: vars(stats) for split, stats in self.stats.items()},
            "skipped_rows": dict(self.bad_rows.counts),
        }


def load_rows(data: DataSourceArgs, seed: int, bad: BadRowLog, txt_documents: str = "line") -> tuple[list[Row], list[Row]]:
    """Training and evaluation rows: mixed sources, eval from eval_file or a seeded split."""
    train = [row for spec in as_list(data.train_file) for row in read_source(spec, bad, seed, txt_documents)]
    evaluation = [row for spec in as_list(data.eval_file) for row in read_source(spec, bad, seed, txt_documents)]
    if data.eval_split and not evaluation:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(len(train) * data.eval_split))
        held_out = set(order[:n_eval])
        evaluation = [row for i, row in enumerate(train) if i in held_out]
        train = [row for i, row in enumerate(train) if i not in held_out]
    return train, evaluation


def build_sft_data(data: DataArgs, tokenizer, renderer: Renderer, seed: int) -> BuiltData:
    """Read, normalise and tokenize the SFT data; return HF datasets with input_ids and labels."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    keys = {**DEFAULT_KEYS, **data.keys}
    train_rows, eval_rows = load_rows(data, seed, bad)
    built, stats, texts = {}, {}, {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
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
    fingerprints = {spec: fingerprint(spec) for spec in as_list(data.train_file) + as_list(data.eval_file)}
    return BuiltData(built["train"], built.get("eval"), stats, bad, fingerprints, texts)


def encode_all(conversations: list, tokenizer, renderer: Renderer, data: DataArgs) -> tuple[dict[str, list], DataStats]:
    """Encode conversations; drop those left with no trained token after truncation."""
    stats = DataStats()
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
