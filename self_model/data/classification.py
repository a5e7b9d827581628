"""Classification data: texts with a label -> token ids and the label as the model's head reads it.

Schema of the `classification` kind: `{"text": str, "label": str | int | float | [str | int]}`: a label name or id
(single-label), a list of them (multi-label) or a number (regression).

The label map (`id2label`) is `data.labels` when given, else the sorted label names of the training rows (ids
0..max when the labels are ids); a label outside it is a bad row naming the file and line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData, share
from self_model.data.sources import BadRow, BadRowLog, Row, fingerprints, load_rows
from self_model.errors import DataError

CLASSIFICATION_KEYS = {"text": "text", "label": "label"}
TASKS = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
         "regression": "regression"}  # our name -> transformers' problem_type


@dataclass
class ClassificationDataArgs(DataSourceArgs):
    """Texts with a label: single-label, multi-label or regression."""

    task: Literal["single_label", "multi_label", "regression"] = option(
        "single_label (one class per text), multi_label (a list of classes per text) or regression (a number).",
        "single_label")
    text_key: str = option("Field with the text.", "text")
    label_key: str = option("Field with the label: a name or id, a list of them (multi_label), or a number.", "label")
    labels: list[str] | None = option(
        "The label names in id order (saved as the model's id2label); null: the sorted names found in the training "
        "rows. A row whose label is not among them is a bad row.", None)
    max_length: int = option("Texts longer than this many tokens are truncated (the share is reported).", 512)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.max_length < 2:
            found.append(("data.max_length", f"must be at least 2, got {self.max_length}"))
        if self.labels is not None and self.task == "regression":
            found.append(("data.labels", "regression predicts a number and has no label names; remove data.labels"))
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            repeated = sorted(name for name, n in Counter(self.labels).items() if n > 1)
            found.append(("data.labels", f"names repeated: {', '.join(repeated)}"))
        if self.labels is not None and len(self.labels) < 2:
            found.append(("data.labels", f"a classifier needs at least two labels, got {self.labels}"))
        return found


# ---------------------------------------------------------------- the `classification` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    text, label = row.get(keys["text"]), row.get(keys["label"])
    if not isinstance(text, str):
        raise BadRow(f"missing field {keys['text']!r} (a string)")
    if label is None or isinstance(label, (dict, bool)):
        raise BadRow(f"missing field {keys['label']!r} (a name, an id, a list of them, or a number)")
    return {"text": text, "label": label}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {**record, "text": fn(record["text"])}


def check_record(record: dict) -> None:
    if not record["text"].strip():
        raise BadRow("empty text")


# ---------------------------------------------------------------- labels


def _names(value: Any, task: str, key: str) -> list:
    """The label(s) of one row as a list of names or ids; raises BadRow for the wrong shape."""
    values = value if isinstance(value, list) else [value]
    if task == "multi_label" and not isinstance(value, list):
        raise BadRow(f"field {key!r} must be a list of labels for task multi_label, got {value!r}")
    if task == "single_label" and isinstance(value, list):
        raise BadRow(f"field {key!r} must be one label for task single_label, got a list (use task: multi_label)")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise BadRow(f"field {key!r}: a label is a name or an integer id, got {item!r}")
    return values


def label_map(rows: list[dict], data: ClassificationDataArgs) -> list[str]:
    """The label names in id order: data.labels, or those of the training rows."""
    if data.labels is not None:
        return list(data.labels)
    found = {item for row in rows for item in (row["label"] if isinstance(row["label"], list) else [row["label"]])}
    if found and all(isinstance(item, int) for item in found):
        return [str(i) for i in range(max(found) + 1)]
    return sorted(str(item) for item in found)


def encode_label(value: Any, names: list[str], data: ClassificationDataArgs) -> int | float | list[float]:
    """A row's label as the head's target: a class id, a multi-hot vector, or a float."""
    if data.task == "regression":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRow(f"field {data.label_key!r} must be a number for task regression, got {value!r}")
        return float(value)
    ids = []
    for item in _names(value, data.task, data.label_key):
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise BadRow(f"label id {item} is outside the label map (ids 0..{len(names) - 1})")
            ids.append(item)
        elif item in names:
            ids.append(names.index(item))
        else:
            raise BadRow(f"label {item!r} is not in the label map ({', '.join(names[:20])}); add it to data.labels")
    if data.task == "single_label":
        return ids[0]
    return [1.0 if i in ids else 0.0 for i in range(len(names))]


# ---------------------------------------------------------------- building


@dataclass
class ClassificationStats:
    rows_read: int = 0
    examples: int = 0
    truncated: int = 0
    tokens: int = 0
    label_counts: dict[str, int] | None = None

    def lines(self, split: str) -> list[str]:
        lines = [f"[{split}] rows read {self.rows_read}, examples {self.examples}, truncated to max_length "
                 f"{self.truncated} ({share(self.truncated, self.examples)}), mean length "
                 f"{self.tokens / max(self.examples, 1):.1f} tokens"]
        if self.label_counts:
            shown = ", ".join(f"{name} {n}" for name, n in list(self.label_counts.items())[:12])
            lines.append(f"[{split}] labels: {shown}")
        return lines


@dataclass
class BuiltClassification(BuiltData):
    id2label: dict[int, str] | None = None  # None for regression

    def manifest(self) -> dict:
        return {**super().manifest(), "id2label": self.id2label}


def _records(rows: list[Row], data: ClassificationDataArgs, bad: BadRowLog) -> list[tuple[Row, dict]]:
    keys = {"text": data.text_key, "label": data.label_key}
    out = []
    for row in rows:
        try:
            if not isinstance(row.data, dict):
                raise BadRow(f"a row must be a JSON object, got {type(row.data).__name__}")
            record = to_record(row.data, keys)
            check_record(record)
            if data.task != "regression":
                _names(record["label"], data.task, data.label_key)
            out.append((row, record))
        except BadRow as err:
            bad.record(row.where, str(err))
    return out


def build_classification_data(data: ClassificationDataArgs, tokenizer, seed: int) -> BuiltClassification:
    """Read the rows, fix the label map, tokenize; HF datasets with input_ids and labels."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    records = {TRAIN: _records(train_rows, data, bad), EVAL: _records(eval_rows, data, bad)}
    names = [] if data.task == "regression" else label_map([record for _, record in records[TRAIN]], data)
    if data.task != "regression" and len(names) < 2:
        raise DataError(f"the training rows hold fewer than two labels ({names}); a classifier needs at least two")
    built, stats, preview = {}, {}, []
    for split, rows in ((TRAIN, train_rows), (EVAL, eval_rows)):
        if not rows:
            continue
        columns: dict[str, list] = {"input_ids": [], "labels": []}
        split_stats = ClassificationStats(rows_read=len(rows))
        counts: Counter = Counter()
        for row, record in records[split]:
            try:
                label = encode_label(record["label"], names, data)
            except BadRow as err:
                bad.record(row.where, str(err))
                continue
            ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
            split_stats.truncated += len(ids) > data.max_length
            ids = ids[: data.max_length]
            split_stats.examples += 1
            split_stats.tokens += len(ids)
            counts.update([names[label]] if isinstance(label, int) else
                          [names[i] for i, v in enumerate(label) if v] if isinstance(label, list) else [])
            columns["input_ids"].append(ids)
            columns["labels"].append(label)
            if split == TRAIN and len(preview) < data.preview_examples:
                preview.append({"title": f"example {len(preview)} (label {record['label']!r})", "text": record["text"],
                                "input_ids": ids, "labels": ids})
        if not columns["input_ids"]:
            raise DataError(f"no usable {split} rows (rows read: {len(rows)}; {bad.summary()})")
        split_stats.label_counts = dict(sorted(counts.items(), key=lambda item: -item[1])) if counts else None
        built[split] = datasets.Dataset.from_dict(columns)
        stats[split] = split_stats
    id2label = dict(enumerate(names)) if names else None
    return BuiltClassification(built[TRAIN], built.get(EVAL), stats, bad, fingerprints(data), preview, id2label=id2label)
