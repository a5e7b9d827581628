"""Preference data for the reward model and the DPO family, normalised to TRL's conversational format.

A pair becomes {"prompt": [messages, user turn last], "chosen": [assistant message], "rejected": [assistant
message]} (plus "margin" for the reward model); an unpaired row (KTO) becomes {"prompt", "completion":
[assistant message], "label": bool}. TRL's trainers render these with the tokenizer's chat template, which
the stage sets to our template, so the text is what the model sees at inference. Accepted inputs: prompt /
chosen / rejected strings; `messages` or ShareGPT `conversations` plus chosen / rejected messages
(LLaMA-Factory's dpo_*_demo.json); whole chosen / rejected conversations sharing their turns before the
last; `messages` ending in the answer plus a `label` (LLaMA-Factory's kto_en_demo.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from self_model.config import PreferenceDataArgs
from self_model.data import BadRow, BadRowLog, as_list, check_messages, fingerprint, load_rows, parse_turns, row_to_messages
from self_model.errors import DataError
from self_model.schemas import SCHEMA_KEYS, check_record, to_schema
from self_model.templates import IGNORE_INDEX

Message = dict[str, str]


def _keys(data: PreferenceDataArgs) -> dict[str, str]:
    return {**SCHEMA_KEYS, "prompt": data.prompt_key, "chosen": data.chosen_key, "rejected": data.rejected_key}


def _with_system(prompt: list[Message], row: dict) -> list[Message]:
    system = row.get("system")
    if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
        return [{"role": "system", "content": system}, *prompt]
    return prompt


def _as_turns(value: Any, role: str, field_name: str) -> list[Message]:
    """Text as one turn of `role`; one message or a list of messages as turns."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return parse_turns([value] if isinstance(value, dict) else value, field_name)


def _unpaired(row: dict, data: PreferenceDataArgs, keys: dict[str, str]) -> dict[str, Any]:
    """A KTO row: a prompt and one answer (`completion`, or the last turn of `messages`) with a true/false label."""
    label = row[data.label_key]
    if not isinstance(label, bool):
        raise BadRow(f"field {data.label_key!r} must be true or false, got {label!r}")
    if data.completion_key in row:
        if data.prompt_key not in row:
            raise BadRow(f"an unpaired row with {data.completion_key!r} needs {data.prompt_key!r}")
        prompt = _as_turns(row[data.prompt_key], "user", data.prompt_key)
        completion = _as_turns(row[data.completion_key], "assistant", data.completion_key)
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
    keys = _keys(data)
    if data.chosen_key in row or data.rejected_key in row:
        record = to_schema(row, "preference", keys)
        if not record["prompt"]:
            raise BadRow(f"no prompt: give {data.prompt_key!r}, 'messages'/'conversations', or whole conversations in "
                         f"{data.chosen_key!r} and {data.rejected_key!r}")
        out = {"prompt": _as_turns(record["prompt"], "user", data.prompt_key),
               "chosen": _as_turns(record["chosen"], "assistant", data.chosen_key),
               "rejected": _as_turns(record["rejected"], "assistant", data.rejected_key)}
        out["prompt"] = _with_system(out["prompt"], row)
        check_record(out, "preference")
        if data.margin_key:
            margin = row.get(data.margin_key)
            if not isinstance(margin, (int, float)) or isinstance(margin, bool):
                raise BadRow(f"field {data.margin_key!r} (data.margin_key) must be a number, got {margin!r}")
            out["margin"] = float(margin)
    elif data.label_key in row:
        out = _unpaired(row, data, keys)
        out["prompt"] = _with_system(out["prompt"], row)
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
        share = lambda a, b: f"{100 * a / b:.1f}%" if b else "n/a"  # noqa: E731
        examples = self.pairs or self.desirable + self.undesirable
        kind = f"pairs {self.pairs}" if self.pairs else f"desirable {self.desirable}, undesirable {self.undesirable}"
        return [
            f"[{split}] rows read {self.rows_read}, {kind}; truncated to max_length {self.truncated} "
            f"({share(self.truncated, examples)}), prompt alone too long (dropped by the trainer) {self.prompt_too_long}",
            f"[{split}] mean answer length {self.answer_tokens / max(self.answers, 1):.1f} tokens",
        ]


@dataclass
class BuiltPreference:
    train: Any
    eval: Any | None
    stats: dict[str, PreferenceStats]
    bad_rows: BadRowLog
    fingerprints: dict[str, str]
    paired: bool
    preview: list[dict] = field(default_factory=list)

    def preview_rows(self, tokenizer) -> list[dict]:
        return self.preview

    def manifest(self) -> dict:
        return {"fingerprints": self.fingerprints, "paired": self.paired,
                "stats": {split: vars(stats) for split, stats in self.stats.items()},
                "skipped_rows": dict(self.bad_rows.counts)}


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


def build_preference_data(data: PreferenceDataArgs, tokenizer, seed: int, preview_examples: int) -> BuiltPreference:
    """Read and normalise preference rows; datasets in TRL's conversational format, statistics and a preview."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    built, stats, kinds, preview = {}, {}, set(), []
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
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
        _measure(normalised, tokenizer, data.max_length, split_stats, preview if split == "train" else None)
        built[split] = datasets.Dataset.from_list(normalised)
        stats[split] = split_stats
    if len(kinds) > 1:
        raise DataError("the data mixes pairs (chosen/rejected) and unpaired rows (completion/label); use one kind")
    fingerprints = {spec: fingerprint(spec) for spec in as_list(data.train_file) + as_list(data.eval_file)}
    return BuiltPreference(built["train"], built.get("eval"), stats, bad, fingerprints, paired=kinds == {True},
                           preview=preview)
