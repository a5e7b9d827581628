"""Reward functions for PPO/GRPO: plain Python, found by registry name or `path/to/file.py:function`.

Every reward function has one signature, used unchanged by both backends:

    fn(completion: str, ground_truth: str, data_source: str, extra_info: dict) -> float

`verl_reward.compute_score` adapts a list of them to verl's custom reward hook and `trl_reward_funcs` to
TRL's `reward_funcs`. A function that raises or returns something that is not a finite number stops the
run with the sample it failed on, never a silent zero.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path

from self_model.config import locate
from self_model.errors import ConfigError, UserError

RewardFn = Callable[[str, str, str, dict], float]
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
HASH_ANSWER = re.compile(rf"####\s*\$?\s*({NUMBER})")
BOXED_ANSWER = re.compile(rf"\\boxed\{{\s*\$?\s*({NUMBER})\s*\}}")
ANY_NUMBER = re.compile(NUMBER)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_answer(completion: str) -> str | None:
    """The final answer of a math completion: after `####`, else in `\\boxed{}`, else the last number."""
    for pattern in (HASH_ANSWER, BOXED_ANSWER):
        found = pattern.findall(completion)
        if found:
            return found[-1]
    numbers = ANY_NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def math_accuracy(completion: str, ground_truth: str, data_source: str = "", extra_info: dict | None = None) -> float:
    """1.0 when the completion's final answer equals the ground truth numerically (GSM8K `#### 18`, `\\boxed{18}`)."""
    answer = extract_answer(completion)
    expected = _number(str(ground_truth).strip())
    if answer is None or expected is None:
        return 0.0
    got = _number(answer)
    return float(got is not None and math.isclose(got, expected, rel_tol=0, abs_tol=1e-6))


def answer_format(completion: str, ground_truth: str = "", data_source: str = "", extra_info: dict | None = None) -> float:
    """1.0 when the completion states its answer in a checkable form (`#### N` or `\\boxed{N}`)."""
    return float(bool(HASH_ANSWER.search(completion) or BOXED_ANSWER.search(completion)))


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


def canonical(spec: str) -> str:
    """The spec as verl's workers can use it from any directory: a registry name or `/absolute/file.py:function`."""
    if spec in REGISTRY:
        return spec
    path, sep, name = spec.rpartition(":")
    return f"{Path(locate(path)).resolve()}{sep}{name}" if sep and path.endswith(".py") else spec


def resolve(spec: str) -> RewardFn:
    """A reward function from its registry name or `path/to/file.py:function` (relative: cwd, then the repo root)."""
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


def trl_reward_funcs(functions: list[RewardFn]) -> list[Callable[..., list[float]]]:
    """TRL `reward_funcs`: each gets the batch (prompts, completions, dataset columns) and returns one float each."""

    def adapt(fn: RewardFn):
        def reward(prompts, completions, ground_truth, data_source, **kwargs) -> list[float]:
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [call_reward(fn, text, truth, source, {}) for text, truth, source in zip(texts, ground_truth, data_source)]

        reward.__name__ = getattr(fn, "__name__", "reward")
        return reward

    return [adapt(fn) for fn in functions]

