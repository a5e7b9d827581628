"""The four kinds of data the stages read, and the conversion of input rows into their schemas.

- `pretrain`: `{"text": str}`. Read from rows with `text`, and `.txt` files (one document a line).
- `sft`: `{"messages": [{"role", "content"}, ...]}`. Read from OpenAI `messages`, ShareGPT `conversations`,
  Alpaca and `input`/`output` rows (`self_model.data.row_to_messages`).
- `preference`: `{"prompt": str, "chosen": str, "rejected": str}` when all three are strings, else TRL's
  conversational form `{"prompt": [messages], "chosen": [assistant turns], "rejected": [...]}`. Read from string
  triples; `prompt` as messages; ShareGPT `conversations` (or `messages`, Alpaca `instruction`/`input`) with
  `chosen`/`rejected` given as strings, message objects (`from`/`value` or `role`/`content`) or lists of them, as in
  LLaMA-Factory's dpo_*.json; whole `chosen`/`rejected` conversations with no `prompt` (their shared first turns
  become the prompt).
- `rl`: `{"prompt": [messages], "ground_truth": str, "data_source": str}` (verl's fields). Read from `prompt` (string
  or messages) with `ground_truth` or verl's `reward_model.ground_truth`, and GSM8K `question`/`answer` rows (the
  number after `####` is the ground truth, data_source `openai/gsm8k`).

Input field names can be renamed with `keys` (e.g. `{prompt: query}`); the names are those of `SCHEMA_KEYS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from self_model.data import (
    DEFAULT_KEYS,
    BadRow,
    _text,
    alpaca_prompt,
    check_messages,
    detect_format,
    parse_turns,
    row_to_messages,
    with_system,
)

KINDS = ("pretrain", "sft", "preference", "rl")
SCHEMA_KEYS = {
    **DEFAULT_KEYS,
    **{k: k for k in ("text", "prompt", "chosen", "rejected", "question", "answer", "ground_truth", "data_source")},
}
GSM8K_ANSWER = re.compile(r"#### (-?[0-9.,]+)")  # verl's examples/data_preprocess/gsm8k.py
GSM8K_SOURCE = "openai/gsm8k"


def detect_kind(row: Any, keys: dict[str, str]) -> str:
    """The kind of data a row holds, from its field names."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    present = {name for name, field in keys.items() if field in row}
    if {"chosen", "rejected"} <= present:
        return "preference"
    if "ground_truth" in present or "reward_model" in row or {"question", "answer"} <= present:
        return "rl"
    if present & {"messages", "conversations", "instruction", "input", "output"}:
        return "sft"
    if "text" in present:
        return "pretrain"
    raise BadRow(f"cannot tell the kind of data from its keys {sorted(row)[:8]} (set kind, and keys to rename fields)")


def to_schema(row: Any, kind: str, keys: dict[str, str], data_source: str | None = None) -> dict:
    """One input row as a record of `kind`'s schema; `data_source` is the default for RL rows without one."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    if kind == "pretrain":
        text = row.get(keys["text"])
        if not isinstance(text, str):
            raise BadRow(f"field {keys['text']!r} must be a string")
        return {"text": text}
    if kind == "sft":
        return {"messages": row_to_messages(row, "auto", keys, check=False)}
    if kind == "preference":
        return _to_preference(row, keys)
    return _to_rl(row, keys, data_source)


def map_texts(record: dict, kind: str, fn: Callable[[str], str]) -> dict:
    """The record with `fn` applied to every text a model reads (not ground_truth or data_source)."""
    if kind == "pretrain":
        return {"text": fn(record["text"])}
    if kind == "sft":
        return {"messages": _map_messages(record["messages"], fn)}
    if kind == "preference":
        return {key: fn(value) if isinstance(value, str) else _map_messages(value, fn) for key, value in record.items()}
    return {**record, "prompt": _map_messages(record["prompt"], fn)}


def record_text(record: dict, kind: str) -> str:
    """The record's texts joined by newlines: what filters measure and near-dedup compares."""
    parts: list[str] = []
    map_texts(record, kind, lambda text: parts.append(text) or text)  # map_texts knows where the texts are
    return "\n".join(parts)


def check_record(record: dict, kind: str) -> None:
    """Raise BadRow when a record is empty or one-sided (no reply, no prompt, chosen equal to rejected)."""
    if kind == "pretrain":
        if not record["text"].strip():
            raise BadRow("empty text")
    elif kind == "sft":
        check_messages(record["messages"])
    elif kind == "preference":
        _check_preference(record)
    else:
        _check_turns(record["prompt"], "prompt", last_role="user")
        if not record["ground_truth"].strip():
            raise BadRow("empty ground_truth")


# ---------------------------------------------------------------- preference


def _to_preference(row: dict, keys: dict[str, str]) -> dict:
    chosen, rejected, prompt = row.get(keys["chosen"]), row.get(keys["rejected"]), row.get(keys["prompt"])
    if all(isinstance(value, str) for value in (prompt, chosen, rejected)):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen_turns, rejected_turns = _replies(chosen, keys["chosen"]), _replies(rejected, keys["rejected"])
    if prompt is not None:
        prompt_turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else parse_turns(prompt, keys["prompt"])
    elif any(keys[name] in row for name in ("messages", "conversations", "instruction", "input")):
        prompt_turns = _prompt_turns(row, keys)
    else:  # implicit prompt: the turns chosen and rejected share
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[shared] == rejected_turns[shared]:
            shared += 1
        prompt_turns = chosen_turns[:shared]
    # A reply given as the whole conversation repeats the prompt: keep only what follows it.
    if chosen_turns[: len(prompt_turns)] == prompt_turns and rejected_turns[: len(prompt_turns)] == prompt_turns:
        chosen_turns, rejected_turns = chosen_turns[len(prompt_turns) :], rejected_turns[len(prompt_turns) :]
    return {"prompt": prompt_turns, "chosen": chosen_turns, "rejected": rejected_turns}


def _prompt_turns(row: dict, keys: dict[str, str]) -> list[dict[str, str]]:
    """The prompt of an SFT-shaped preference row: its turns without a final reply."""
    fmt = detect_format(row, keys)
    if fmt == "alpaca":
        return with_system(alpaca_prompt(row, keys), row, keys)
    if fmt == "input_output":
        return with_system([{"role": "user", "content": _text(row, keys["input"])}], row, keys)
    return row_to_messages(row, fmt, keys, check=False)


def _replies(value: Any, field_name: str) -> list[dict[str, str]]:
    """chosen/rejected as turns: a string is one assistant turn, a message object one turn, a list the turns."""
    if value is None:
        raise BadRow(f"missing field {field_name!r}")
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    return parse_turns([value] if isinstance(value, dict) else value, field_name)


def _check_preference(record: dict) -> None:
    if isinstance(record["prompt"], str):
        for key in ("prompt", "chosen", "rejected"):
            if not record[key].strip():
                raise BadRow(f"empty {key}")
    else:
        _check_turns(record["prompt"], "prompt", last_role="user")
        for key in ("chosen", "rejected"):
            _check_turns(record[key], key, first_role="assistant")
    if record["chosen"] == record["rejected"]:
        raise BadRow("chosen equals rejected")


def _check_turns(turns: list[dict[str, str]], name: str, last_role: str = "", first_role: str = "") -> None:
    if not turns:
        raise BadRow(f"empty {name}")
    if any(not turn["content"].strip() for turn in turns):
        raise BadRow(f"{name} has an empty turn")
    if last_role and turns[-1]["role"] != last_role:
        raise BadRow(f"{name} must end with a {last_role} turn, got {turns[-1]['role']!r}")
    if first_role and turns[0]["role"] != first_role:
        raise BadRow(f"{name} must start with an {first_role} turn, got {turns[0]['role']!r}")


def _map_messages(messages: list[dict[str, str]], fn: Callable[[str], str]) -> list[dict[str, str]]:
    return [{**message, "content": fn(message["content"])} for message in messages]


# ---------------------------------------------------------------- RL prompts


def _to_rl(row: dict, keys: dict[str, str], data_source: str | None) -> dict:
    source = row.get(keys["data_source"]) or data_source
    if keys["prompt"] in row:
        prompt = row[keys["prompt"]]
        turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else parse_turns(prompt, keys["prompt"])
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
