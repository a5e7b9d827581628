"""Reward functions for PPO/GRPO: plain Python, found by registry name or `path/to/file.py:function`.

Every reward function has one signature, used unchanged by both backends:

    fn(completion: str, ground_truth: str, data_source: str, extra_info: dict) -> float

`verl_reward.compute_score` adapts a list of them to verl's custom reward hook and `trl_reward_funcs` to
TRL's `reward_funcs`. A function that raises or returns something that is not a finite number stops the
run with the sample it failed on, never a silent zero.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from self_model.config import locate
from self_model.errors import ConfigError, UserError

RewardFn = Callable[[str, str, str, dict], float]
NUMBER = r"[-\u2212]?\s*\\?\$?\s*\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|\\d?frac\{[-\u2212]?\d+\}\{\d+\}"
NUMBER_TOKEN = re.compile(NUMBER)
# the marks of a final answer: what follows up to the end of the sentence (or the box's closing brace) is the answer
ANSWER_MARK = re.compile(r"####|\\boxed\{|\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:|=)", re.IGNORECASE)
SENTENCE_END = re.compile(r"\n|\.(?:\s|$)")
FRACTION = re.compile(r"\\d?frac\{(-?\d+)\}\{(\d+)\}")
TRUNCATED = "truncated"  # extra_info key the backends set when an answer hit max_response_length without ending


def parse_number(text: str) -> Fraction | None:
    """A number as written in an answer: `1,234`, `$18.00`, `-3.5`, `\u22123`, `3/4`, `\\frac{3}{4}`; else None."""
    text = text.replace("\u2212", "-").replace("\\$", "").replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    frac = FRACTION.fullmatch(text)
    if frac:
        text = f"{frac[1]}/{frac[2]}"
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def marked_answers(completion: str) -> list[Fraction]:
    """Every number stated as a final answer (after `####`, in `\\boxed{}`, after "the answer is"), in order."""
    found = []
    for mark in ANSWER_MARK.finditer(completion):
        rest = completion[mark.end():]
        span = _box_content(rest) if mark[0].endswith("{") else rest[: _end(SENTENCE_END.search(rest), rest)]
        found += [value for token in NUMBER_TOKEN.findall(span) if (value := parse_number(token)) is not None]
    return found


def _end(match, text: str) -> int:
    return match.start() if match else len(text)


def _box_content(text: str) -> str:
    """The text up to the brace that closes an opened `\\boxed{` (all of it when the box never closes)."""
    depth = 1
    for i, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[:i]
    return text


def math_accuracy(completion: str, ground_truth: str, data_source: str = "", extra_info: dict | None = None,
                  lenient: bool = False) -> float:
    """1.0 when the completion states one final answer (`#### N`, `\\boxed{N}`, "the answer is N") equal to the
    ground truth as a number; 0.0 for no marked answer, several different ones, or a truncated completion.
    `lenient`: the last number after a mark, else the last number of all, truncated or not."""
    expected = parse_number(str(ground_truth).strip())
    answers = marked_answers(completion)
    if lenient:
        numbers = answers or [v for t in NUMBER_TOKEN.findall(completion) if (v := parse_number(t)) is not None]
        return float(bool(numbers) and numbers[-1] == expected)
    if (extra_info or {}).get(TRUNCATED) or len(set(answers)) != 1:
        return 0.0
    return float(answers[0] == expected)


def answer_format(completion: str, ground_truth: str = "", data_source: str = "", extra_info: dict | None = None) -> float:
    """1.0 when the completion states exactly one final answer value in a checkable form (`#### N` or `\\boxed{N}`)."""
    return float(len(set(marked_answers(completion))) == 1 and bool(re.search(r"####|\\boxed\{", completion)))


def length_penalty(completion: str, ground_truth: str = "", data_source: str = "", extra_info: dict | None = None,
                   target_chars: int = 1000) -> float:
    """0 up to `target_chars` characters, then falling linearly to -1 at twice that length (and no lower)."""
    excess = max(0, len(completion) - target_chars)
    return -min(1.0, excess / target_chars)


REGISTRY: dict[str, RewardFn] = {
    "math_accuracy": math_accuracy,
    "gsm8k": math_accuracy,
    "answer_format": answer_format,
    "length_penalty": length_penalty,
}
MATH_REWARDS = ("math_accuracy", "gsm8k")  # the names rl.reward.lenient applies to


def canonical(spec: str) -> str:
    """The spec as verl's workers can use it from any directory: a registry name or `/absolute/file.py:function`."""
    if spec in REGISTRY:
        return spec
    path, sep, name = spec.rpartition(":")
    return f"{Path(locate(path)).resolve()}{sep}{name}" if sep and path.endswith(".py") else spec


def resolve(spec: str, lenient: bool = False) -> RewardFn:
    """A reward function from its registry name or `path/to/file.py:function` (relative: cwd, then the repo root);
    `lenient` switches math_accuracy to its permissive rule (rl.reward.lenient)."""
    if spec in MATH_REWARDS and lenient:
        return functools.update_wrapper(functools.partial(REGISTRY[spec], lenient=True), REGISTRY[spec])
    if spec in REGISTRY:
        return REGISTRY[spec]
    spec = canonical(spec)
    path, sep, name = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise ConfigError([f"rl.reward.functions: unknown reward {spec!r} (built in: {', '.join(REGISTRY)}; "
                           "or give path/to/file.py:function)"], spec)
    if not Path(path).is_file():
        raise ConfigError([f"rl.reward.functions: file not found: {path}"], spec)
    module_spec = importlib.util.spec_from_file_location(f"reward_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError([f"rl.reward.functions: {path} has no function {name!r}"], spec)
    return fn


class RewardError(UserError):
    """A reward function failed or returned a non-number on a sample."""


def call_reward(fn: RewardFn, completion: str, ground_truth: str, data_source: str, extra_info: dict) -> float:
    """Call a reward function; any failure names the function and shows the sample."""
    name = getattr(fn, "__name__", repr(fn))
    sample = f"completion {completion[:200]!r}, ground_truth {ground_truth!r}, data_source {data_source!r}"
    try:
        value = fn(completion, ground_truth, data_source, extra_info)
    except Exception as err:  # the user's function: whatever it raises ends the same way
        raise RewardError(f"reward function {name} raised {type(err).__name__}: {err} on {sample}") from err
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardError(f"reward function {name} returned {value!r} (not a finite number) on {sample}")
    return float(value)


def combined(functions: list[RewardFn], weights: list[float], completion: str, ground_truth: str, data_source: str,
             extra_info: dict) -> dict[str, float]:
    """Each function's value and their weighted sum under `score`."""
    values = {getattr(fn, "__name__", f"reward_{i}"): call_reward(fn, completion, ground_truth, data_source, extra_info)
              for i, fn in enumerate(functions)}
    values["score"] = sum(w * v for w, v in zip(weights, values.values()))
    return values


def trl_reward_funcs(functions: list[RewardFn], eos_token_id: int, max_length: int) -> list[Callable[..., list[float]]]:
    """TRL `reward_funcs`: each gets the batch (prompts, completions, completion ids, dataset columns) and returns
    one float each; an answer that filled `max_length` tokens without EOS is marked truncated."""

    def adapt(fn: RewardFn):
        def reward(prompts, completions, ground_truth, data_source, completion_ids, **kwargs) -> list[float]:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            cut = [len(ids) >= max_length and ids[-1] != eos_token_id for ids in completion_ids]
            return [call_reward(fn, text, truth, source, {TRUNCATED: truncated})
                    for text, truth, source, truncated in zip(texts, ground_truth, data_source, cut)]

        reward.__name__ = getattr(fn, "__name__", "reward")
        return reward

    return [adapt(fn) for fn in functions]
