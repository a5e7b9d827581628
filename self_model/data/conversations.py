"""Conversations: one message list from any accepted row shape (OpenAI `messages`, ShareGPT `conversations`, Alpaca
`instruction`/`input`/`output` with `history`, plain `input`/`output`), and the rules a conversation must follow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from self_model.data.sources import BadRow

Message = dict[str, str]
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
CONVERSATION_KEYS = {k: k for k in ("messages", "conversations", "system", "instruction", "input", "output", "history")}


def text_field(row: dict, key: str, required: bool = True) -> str:
    """A string field of a row ("" when optional and absent)."""
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise BadRow(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def parse_turn(item: Any, field_name: str) -> Message:
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


def parse_turns(items: Any, field_name: str) -> list[Message]:
    if not isinstance(items, list) or not items:
        raise BadRow(f"field {field_name!r} must be a non-empty list of turns")
    return [parse_turn(item, field_name) for item in items]


def as_turns(value: Any, field_name: str, role: str) -> list[Message]:
    """A field as turns: a string is one turn of `role`, a message object one turn, a list the turns."""
    if value is None:
        raise BadRow(f"missing field {field_name!r}")
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return parse_turns([value] if isinstance(value, dict) else value, field_name)


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


def row_to_messages(row: Any, data_format: str, keys: dict[str, str], check: bool = True) -> list[Message]:
    """One row in any supported SFT format -> an OpenAI-style message list, checked unless `check` is False."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    fmt = detect_format(row, keys) if data_format == "auto" else data_format
    if fmt == "messages":
        messages = parse_turns(row.get(keys["messages"]), keys["messages"])
    elif fmt == "sharegpt":
        messages = parse_turns(row.get(keys["conversations"]), keys["conversations"])
    elif fmt == "alpaca":
        messages = [*alpaca_prompt(row, keys), {"role": "assistant", "content": text_field(row, keys["output"])}]
    else:
        messages = [
            {"role": "user", "content": text_field(row, keys["input"])},
            {"role": "assistant", "content": text_field(row, keys["output"])},
        ]
    messages = with_system(messages, row, keys)
    if check:
        check_messages(messages)
    return messages


def prompt_turns(row: dict, keys: dict[str, str]) -> list[Message]:
    """The turns of an SFT-shaped row that has no final reply (a preference row's prompt)."""
    fmt = detect_format(row, keys)
    if fmt == "alpaca":
        return with_system(alpaca_prompt(row, keys), row, keys)
    if fmt == "input_output":
        return with_system([{"role": "user", "content": text_field(row, keys["input"])}], row, keys)
    return row_to_messages(row, fmt, keys, check=False)


def alpaca_prompt(row: dict, keys: dict[str, str]) -> list[Message]:
    """An Alpaca row's `history` pairs, then its instruction (and input) as the last user turn."""
    instruction, extra = text_field(row, keys["instruction"]), text_field(row, keys["input"], required=False)
    messages = []
    for pair in row.get(keys["history"]) or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise BadRow(f"field {keys['history']!r} must be a list of [user, assistant] string pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra else instruction})
    return messages


def with_system(messages: list[Message], row: dict, keys: dict[str, str]) -> list[Message]:
    """`messages` led by the row's `system` string, unless they already start with a system turn."""
    system = row.get(keys["system"])
    if isinstance(system, str) and system.strip() and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


def check_messages(messages: list[Message], last: str = "assistant") -> None:
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


def check_turns(turns: list[Message], name: str, last_role: str = "", first_role: str = "") -> None:
    """No empty turns; optionally the role the turns must end or start with."""
    if not turns:
        raise BadRow(f"empty {name}")
    if any(not turn["content"].strip() for turn in turns):
        raise BadRow(f"{name} has an empty turn")
    if last_role and turns[-1]["role"] != last_role:
        raise BadRow(f"{name} must end with a {last_role} turn, got {turns[-1]['role']!r}")
    if first_role and turns[0]["role"] != first_role:
        raise BadRow(f"{name} must start with an {first_role} turn, got {turns[0]['role']!r}")


def map_messages(messages: list[Message], fn: Callable[[str], str]) -> list[Message]:
    return [{**message, "content": fn(message["content"])} for message in messages]
