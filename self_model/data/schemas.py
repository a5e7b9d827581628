"""The kinds of data the stages read, one registry: how a row is recognised, converted into its kind's schema,
checked, and which of its strings are texts a model reads. Each kind's schema is described in its module
(`text`, `sft`, `preference`, `rl`, `classification`, `embedding`); `data_process` writes these schemas and every stage reads them.

Input field names can be renamed with `keys` (e.g. `{prompt: query}`); the valid names are those of `SCHEMA_KEYS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from self_model.data import classification, embedding, preference, rl, sft, text
from self_model.data.conversations import CONVERSATION_KEYS
from self_model.data.sources import BadRow


@dataclass(frozen=True)
class Kind:
    name: str
    recognise: Callable[[set[str], dict], bool]  # (schema keys present in the row, the row) -> is it this kind
    to_record: Callable[[dict, dict[str, str], str | None], dict]  # (row, keys, default data_source) -> record
    map_texts: Callable[[dict, Callable[[str], str]], dict]  # the record with a function applied to every text
    check: Callable[[dict], None]  # raise BadRow for an empty or one-sided record


KINDS = {kind.name: kind for kind in (  # in the order they are recognised: the first that matches wins
    Kind("embedding", lambda present, row: {"query", "positive"} <= present,
         embedding.to_record, embedding.map_texts, embedding.check_record),
    Kind("classification", lambda present, row: {"text", "label"} <= present,
         classification.to_record, classification.map_texts, classification.check_record),
    Kind("preference", lambda present, row: {"chosen", "rejected"} <= present,
         preference.to_record, preference.map_texts, preference.check_record),
    Kind("rl", lambda present, row: "ground_truth" in present or "reward_model" in row or {"question", "answer"} <= present,
         rl.to_record, rl.map_texts, rl.check_record),
    Kind("sft", lambda present, row: bool(present & {"messages", "conversations", "instruction", "input", "output"}),
         sft.to_record, sft.map_texts, sft.check_record),
    Kind("pretrain", lambda present, row: "text" in present, text.to_record, text.map_texts, text.check_record),
)}
SCHEMA_KEYS = {**CONVERSATION_KEYS, **preference.PREFERENCE_KEYS, **rl.RL_KEYS, **classification.CLASSIFICATION_KEYS,
               **embedding.EMBEDDING_KEYS}


def _object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    return row


def detect_kind(row: Any, keys: dict[str, str]) -> str:
    """The kind of data a row holds, from its field names."""
    present = {name for name, field in keys.items() if field in _object(row)}
    for kind in KINDS.values():
        if kind.recognise(present, row):
            return kind.name
    raise BadRow(f"cannot tell the kind of data from its keys {sorted(row)[:8]} (set kind, and keys to rename fields)")


def to_schema(row: Any, kind: str, keys: dict[str, str], data_source: str | None = None) -> dict:
    """One input row as a record of `kind`'s schema; `data_source` is the default for RL rows without one."""
    return KINDS[kind].to_record(_object(row), keys, data_source)


def map_texts(record: dict, kind: str, fn: Callable[[str], str]) -> dict:
    """The record with `fn` applied to every text a model reads (not ground_truth or data_source)."""
    return KINDS[kind].map_texts(record, fn)


def record_text(record: dict, kind: str) -> str:
    """The record's texts joined by newlines: what filters measure and near-dedup compares."""
    parts: list[str] = []
    map_texts(record, kind, lambda value: parts.append(value) or value)  # map_texts knows where the texts are
    return "\n".join(parts)


def check_record(record: dict, kind: str) -> None:
    """Raise BadRow when a record is empty or one-sided (no reply, no prompt, chosen equal to rejected)."""
    KINDS[kind].check(record)
