"""Preference data for the reward model and the DPO family, in TRL's conversational format.

Schema of the `preference` kind: `{"prompt": str, "chosen": str, "rejected": str}` when all three are strings, else
`{"prompt": [messages], "chosen": [assistant turns], "rejected": [...]}`. Read from string triples; `prompt` as
messages; ShareGPT `conversations` (or `messages`, Alpaca `instruction`/`input`) with `chosen`/`rejected` as strings,
message objects or lists of them (LLaMA-Factory's dpo_*.json); whole `chosen`/`rejected` conversations with no
`prompt` (their shared first turns become the prompt).

A stage gets pairs {"prompt": [messages, user turn last], "chosen": [assistant message], "rejected": [...]} (plus
"margin" for the reward model), or unpaired rows (KTO) {"prompt", "completion": [assistant message], "label": bool}.
TRL's trainers render these with the tokenizer's chat template, which the stage sets to ours, so the text is what
the model sees at inference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData, share
from self_model.data.conversations import (
    CONVERSATION_KEYS,
    Message,
    as_turns,
    check_messages,
    check_turns,
    map_messages,
    prompt_turns,
    row_to_messages,
    with_system,
)
from self_model.data.sources import BadRow, BadRowLog, fingerprints, load_rows
from self_model.errors import DataError
from self_model.template import IGNORE_INDEX

PREFERENCE_KEYS = {**CONVERSATION_KEYS, "prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


@dataclass
class PreferenceDataArgs(DataSourceArgs):
    """Preference data for reward models and the DPO family: pairs, or unpaired rows with a label (KTO)."""

    prompt_key: str = option("Field with the prompt: a string or a list of messages (user turn last).", "prompt")
    chosen_key: str = option(
        "Field with the preferred answer: a string, one assistant message, or a whole conversation.", "chosen"
    )
    rejected_key: str = option("Field with the dispreferred answer, same forms as chosen_key.", "rejected")
    completion_key: str = option("Unpaired rows (KTO): field with the answer.", "completion")
    label_key: str = option("Unpaired rows (KTO): field saying whether the answer is desirable (true/false).", "label")
    margin_key: str | None = option("Reward model: field with a per-pair margin added to the pairwise loss.", None)
    max_length: int = option("Prompt plus answer longer than this many tokens is truncated (the share is reported).", 1024)

    def problems(self) -> list[tuple[str, str]]:
        if self.max_length < 8:
            return [("data.max_length", f"must be at least 8, got {self.max_length}")]
        return []


# ---------------------------------------------------------------- the `preference` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    chosen, rejected, prompt = row.get(keys["chosen"]), row.get(keys["rejected"]), row.get(keys["prompt"])
    if all(isinstance(value, str) for value in (prompt, chosen, rejected)):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    chosen_turns = as_turns(chosen, keys["chosen"], "assistant")
    rejected_turns = as_turns(rejected, keys["rejected"], "assistant")
    if prompt is not None:
        prompts = as_turns(prompt, keys["prompt"], "user")
    elif any(keys[name] in row for name in ("messages", "conversations", "instruction", "input")):
        prompts = prompt_turns(row, keys)
    else:  # implicit prompt: the turns chosen and rejected share
        shared = 0
        while shared < min(len(chosen_turns), len(rejected_turns)) and chosen_turns[shared] == rejected_turns[shared]:
            shared += 1
        prompts = chosen_turns[:shared]
    # A reply given as the whole conversation repeats the prompt: keep only what follows it.
    if chosen_turns[: len(prompts)] == prompts and rejected_turns[: len(prompts)] == prompts:
        chosen_turns, rejected_turns = chosen_turns[len(prompts):], rejected_turns[len(prompts):]
    return {"prompt": prompts, "chosen": chosen_turns, "rejected": rejected_turns}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {key: fn(value) if isinstance(value, str) else map_messages(value, fn) for key, value in record.items()}


def check_record(record: dict) -> None:
    """Raise BadRow for an empty side, a prompt not ending with the user, or chosen equal to rejected."""
    if isinstance(record["prompt"], str):
        for key in ("prompt", "chosen", "rejected"):
            if not record[key].strip():
                raise BadRow(f"empty {key}")
    else:
        check_turns(record["prompt"], "prompt", last_role="user")
        for key in ("chosen", "rejected"):
            check_turns(record[key], key, first_role="assistant")
    if record["chosen"] == record["rejected"]:
        raise BadRow("chosen equals rejected")


# ---------------------------------------------------------------- rows -> pairs or unpaired rows


def _unpaired(row: dict, data: PreferenceDataArgs, keys: dict[str, str]) -> dict[str, Any]:
    """A KTO row: a prompt and one answer (`completion`, or the last turn of `messages`) with a true/false label."""
    label = row[data.label_key]
    if not isinstance(label, bool):
        raise BadRow(f"field {data.label_key!r} must be true or false, got {label!r}")
    if data.completion_key in row:
        if data.prompt_key not in row:
            raise BadRow(f"an unpaired row with {data.completion_key!r} needs {data.prompt_key!r}")
        prompt = as_turns(row[data.prompt_key], data.prompt_key, "user")
        completion = as_turns(row[data.completion_key], data.completion_key, "assistant")
    else:
        conversation = row_to_messages(row, "auto", keys)  # ends with the answer
        prompt, completion = conversation[:-1], conversation[-1:]
    if completion[-1]["role"] != "assistant" or not completion[-1]["content"].strip():
        raise BadRow("the answer of an unpaired row must be a non-empty assistant turn")
    return {"prompt": prompt, "completion": completion, "label": label}


def row_to_preference(row: Any, data: PreferenceDataArgs) -> dict[str, Any]:
    """One input row -> a conversational pair (prompt/chosen/rejected) or an unpaired row (prompt/completion/label)."""
    if not isinstance(row, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row).__name__}")
    keys = {**PREFERENCE_KEYS, "prompt": data.prompt_key, "chosen": data.chosen_key, "rejected": data.rejected_key}
    if data.chosen_key in row or data.rejected_key in row:
        record = to_record(row, keys)
        if not record["prompt"]:
            raise BadRow(f"no prompt: give {data.prompt_key!r}, 'messages'/'conversations', or whole conversations in "
                         f"{data.chosen_key!r} and {data.rejected_key!r}")
        out = {"prompt": with_system(as_turns(record["prompt"], data.prompt_key, "user"), row, keys),
               "chosen": as_turns(record["chosen"], data.chosen_key, "assistant"),
               "rejected": as_turns(record["rejected"], data.rejected_key, "assistant")}
        check_record(out)
        if data.margin_key:
            margin = row.get(data.margin_key)
            if not isinstance(margin, (int, float)) or isinstance(margin, bool):
                raise BadRow(f"field {data.margin_key!r} (data.margin_key) must be a number, got {margin!r}")
            out["margin"] = float(margin)
    elif data.label_key in row:
        out = _unpaired(row, data, keys)
        out["prompt"] = with_system(out["prompt"], row, keys)
    else:
        raise BadRow(f"neither a pair ({data.chosen_key!r}/{data.rejected_key!r}) nor an unpaired row ({data.label_key!r}); "
                     "set data.chosen_key / data.rejected_key to your field names")
    check_messages(out["prompt"], last="user")
    return out


def encode(tokenizer, prompt: list[Message], answer: list[Message]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as TRL tokenizes them: the prompt with the generation prompt, then the rest."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise DataError("the chat template renders the prompt differently once the answer follows it, so the answer "
                        "tokens cannot be found; use a template JSON (template: / template_path:)")
    return prompt_ids, full_ids[len(prompt_ids):]


# ---------------------------------------------------------------- building


@dataclass
class PreferenceStats:
    rows_read: int = 0
    pairs: int = 0
    desirable: int = 0
    undesirable: int = 0
    truncated: int = 0
    prompt_too_long: int = 0
    answer_tokens: int = 0
    answers: int = 0

    def lines(self, split: str) -> list[str]:
        examples = self.pairs or self.desirable + self.undesirable
        kind = f"pairs {self.pairs}" if self.pairs else f"desirable {self.desirable}, undesirable {self.undesirable}"
        return [
            f"[{split}] rows read {self.rows_read}, {kind}; truncated to max_length {self.truncated} "
            f"({share(self.truncated, examples)}), prompt alone too long (dropped by the trainer) {self.prompt_too_long}",
            f"[{split}] mean answer length {self.answer_tokens / max(self.answers, 1):.1f} tokens",
        ]


@dataclass
class BuiltPreference(BuiltData):
    paired: bool = True

    def manifest(self) -> dict:
        return {**super().manifest(), "paired": self.paired}


def _preview_row(tokenizer, title: str, prompt_ids: list[int], answer_ids: list[int]) -> dict:
    ids = prompt_ids + answer_ids
    return {"title": title, "text": tokenizer.decode(ids), "input_ids": ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}


def _measure(rows: list[dict], tokenizer, max_length: int, stats: PreferenceStats, preview: list[dict] | None) -> None:
    """Tokenize like the trainer does, to count truncation and fill the preview."""
    for index, row in enumerate(rows):
        answers = [("chosen", row["chosen"]), ("rejected", row["rejected"])] if "chosen" in row else [
            ("desirable" if row["label"] else "undesirable", row["completion"])]
        prompt_ids = None
        too_long = False
        for side, answer in answers:
            prompt_ids, answer_ids = encode(tokenizer, row["prompt"], answer)
            too_long |= len(prompt_ids) + len(answer_ids) > max_length
            stats.answer_tokens += len(answer_ids)
            stats.answers += 1
            if preview is not None:
                preview.append(_preview_row(tokenizer, f"example {index} ({side})", prompt_ids, answer_ids))
        stats.truncated += too_long
        stats.prompt_too_long += len(prompt_ids) >= max_length


def build_preference_data(data: PreferenceDataArgs, tokenizer, seed: int) -> BuiltPreference:
    """Read and normalise preference rows; datasets in TRL's conversational format, statistics and a preview."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    built, stats, kinds, preview = {}, {}, set(), []
    for split, rows in ((TRAIN, train_rows), (EVAL, eval_rows)):
        if not rows:
            continue
        normalised = []
        for row in rows:
            try:
                normalised.append(row_to_preference(row.data, data))
            except BadRow as err:
                bad.record(row.where, str(err))
        if not normalised:
            raise DataError(f"no usable {split} rows (rows read: {len(rows)}; {bad.summary()})")
        kinds |= {"chosen" in row for row in normalised}
        split_stats = PreferenceStats(rows_read=len(rows))
        split_stats.pairs = sum("chosen" in row for row in normalised)
        split_stats.desirable = sum(row.get("label") is True for row in normalised)
        split_stats.undesirable = sum(row.get("label") is False for row in normalised)
        _measure(normalised, tokenizer, data.max_length, split_stats, preview if split == TRAIN else None)
        built[split] = datasets.Dataset.from_list(normalised)
        stats[split] = split_stats
    if len(kinds) > 1:
        raise DataError("the data mixes pairs (chosen/rejected) and unpaired rows (completion/label); use one kind")
    return BuiltPreference(built[TRAIN], built.get(EVAL), stats, bad, fingerprints(data), preview, paired=kinds == {True})
