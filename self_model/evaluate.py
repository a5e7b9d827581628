"""Evaluate one or more models on a suite: perplexity (chat data: trained tokens only), task accuracy through the reward
functions RL uses (greedy pass@1; pass@k and maj@k with sampling), and lm-evaluation-harness tasks (local task files
work offline). Writes `eval.json` ({"results": {model: {task: {metric: value}}}, ...}) and `eval.md`, a table with
one column per model.

    self-model-eval --model checkpoints/sft --model checkpoints/grpo --config config/eval/tiny.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from self_model.config import check_dataclass, closest, locate, merge_layers, option, path_exists_or_hub_id
from self_model.errors import ConfigError, UserError, exit_on_user_error
from self_model.generation import BACKENDS, Sampling
from self_model.outputs import DTYPES, OutputDir

CHAT_FORMATS = ("auto", "messages", "sharegpt", "alpaca", "input_output")
LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class PerplexityTask:
    """Perplexity of the model on an eval file: chat rows score their trained tokens only, text rows every token."""

    kind: Literal["perplexity"] = option("Task kind.", "perplexity")
    file: str = option("Eval data: a local file (JSONL/JSON/Parquet/CSV/TXT) or dataset id; `#N` takes N rows.", "")
    format: Literal[(*CHAT_FORMATS, "text")] = option(
        "Row format: a chat format (`auto` detects it; the run's template renders it and only the tokens training "
        "would train are scored) or `text` (documents, every token scored).", "auto")
    keys: dict[str, str] = option("Rename the fields read from chat rows (as data.keys in SFT).", {})
    train_on: Literal["all_assistant", "last_assistant", "everything"] = option(
        "Chat rows: which tokens are scored (as data.train_on in SFT).", "all_assistant")
    text_fields: list[str] = option("Text rows: fields holding the text; the first present one wins.", ["text"])
    max_length: int = option("Longer examples are truncated to this many tokens.", 1024)
    bad_rows: Literal["fail", "skip"] = option("A malformed row stops the evaluation (`fail`) or is skipped.", "fail")


@dataclass
class AccuracyTask:
    """Verifiable answers: each prompt's completion is scored by a reward function (the same as RL's)."""

    kind: Literal["accuracy"] = option("Task kind.", "accuracy")
    file: str = option("Prompt rows as RL reads them: `prompt` + `ground_truth` (+ `data_source`), or GSM8K "
                       "`question`/`answer`; `#N` takes N rows.", "")
    reward: str = option("Reward function: a registry name (math_accuracy, ...) or path/to/file.py:function.",
                         "math_accuracy")
    correct_at: float = option("A completion counts as correct when its reward is at least this.", 1.0)
    samples: int = option("Completions per prompt: 1 is greedy pass@1; k > 1 samples and reports pass@1, pass@k "
                          "and maj@k (majority vote over the completions' last numbers).", 1)
    temperature: float = option("Sampling temperature when samples > 1.", 0.7)
    top_p: float = option("Nucleus sampling when samples > 1.", 1.0)
    max_new_tokens: int = option("Longest completion, in tokens.", 256)
    prompt_suffix: str = option("Text added to every prompt, e.g. how to state the final answer.", "")
    data_source: str | None = option("data_source for rows that have none.", None)
    bad_rows: Literal["fail", "skip"] = option("A malformed row stops the evaluation (`fail`) or is skipped.", "fail")


@dataclass
class LmEvalTask:
    """lm-evaluation-harness tasks, by name or defined in local YAML files (include_path)."""

    kind: Literal["lm_eval"] = option("Task kind.", "lm_eval")
    tasks: list[str] = option("lm-eval task names (from include_path or lm-eval's own).", [])
    include_path: str | None = option("A folder of lm-eval task YAML files; their relative data_files are read from "
                                      "this folder, so a task from local files works offline.", None)
    num_fewshot: int | None = option("Few-shot examples (default: each task's own).", None)
    limit: int | None = option("At most this many examples per task.", None)
    apply_chat_template: bool = option("Render requests with the model's chat template.", False)


TASK_KINDS = {"perplexity": PerplexityTask, "accuracy": AccuracyTask, "lm_eval": LmEvalTask}
Task = PerplexityTask | AccuracyTask | LmEvalTask


@dataclass
class EvalConfig:
    """An evaluation suite."""

    tasks: dict[str, dict] = option("Named tasks, each with a `kind`: perplexity, accuracy or lm_eval.", {})
    backend: Literal[BACKENDS] = option("Engine for generation and scoring: transformers, or vllm on a GPU.",
                                        "transformers")
    dtype: Literal[tuple(DTYPES)] = option("Weights dtype (auto: the checkpoint's).", "auto")
    batch_size: int = option("Sequences per forward/generate call (transformers).", 8)
    template: str | None = option("Chat template for models that have none of their own (e.g. a base model).", None)
    seed: int = option("Seed for sampling and `#N` row sampling.", 0)
    max_model_len: int | None = option("vLLM: longest sequence (default: the model's).", None)
    parsed: dict[str, Task] = field(default_factory=dict, init=False)


def load_eval_config(path: str, overrides: list[str] = (), check_files: bool = True) -> tuple[EvalConfig, dict]:
    """The suite checked key by key (tasks by their kind), and that its files exist unless `check_files` is False;
    every problem is reported at once."""
    merged = merge_layers(locate(path), overrides)
    problems: list[str] = []
    cfg = check_dataclass(merged.resolved, EvalConfig, merged.origin_of, problems)
    if not problems and not cfg.tasks:
        problems.append("tasks: name at least one task")
    for name, values in (cfg.tasks if not problems else {}).items():
        kind = values.get("kind") if isinstance(values, dict) else None
        if kind not in TASK_KINDS:
            problems.append(f"tasks.{name}.kind: must be one of {', '.join(TASK_KINDS)}{closest(str(kind), TASK_KINDS)}")
            continue
        task = check_dataclass(values, TASK_KINDS[kind], merged.origin_of, problems, f"tasks.{name}.")
        problems += [f"tasks.{name}.{p}" for p in task_problems(task, check_files)]
        cfg.parsed[name] = task
    if cfg.batch_size < 1:
        problems.append(f"batch_size: must be at least 1, got {cfg.batch_size}")
    if problems:
        raise ConfigError(problems, path)
    return cfg, merged.resolved


def task_problems(task: Task, check_files: bool = True) -> list[str]:
    """Rules within one task, as `key: message`; files are checked here, before any model loads."""
    found = []
    if isinstance(task, (PerplexityTask, AccuracyTask)):
        if not task.file:
            found.append("file: missing: name the eval data")
        else:
            task.file = locate(task.file)
            name = task.file.rsplit("#", 1)[0] if "#" in task.file else task.file
            if check_files and not path_exists_or_hub_id(name):
                found.append(f"file: not found: {name}")
    if isinstance(task, PerplexityTask) and task.max_length < 2:
        found.append(f"max_length: must be at least 2, got {task.max_length}")
    if isinstance(task, AccuracyTask):
        from self_model.rlhf.rewards import resolve

        try:
            resolve(task.reward)
        except ConfigError as err:
            found += [p.replace("rl.reward.functions: ", "reward: ") for p in err.problems]
        sampling = Sampling(task.max_new_tokens, task.temperature if task.samples > 1 else 0.0, task.top_p,
                            n=task.samples)
        found += [p.replace("samples per prompt", "samples") for p in sampling.problems()]
    if isinstance(task, LmEvalTask):
        if not task.tasks:
            found.append("tasks: name at least one lm-eval task")
        if task.include_path:
            task.include_path = locate(task.include_path)
            if check_files and not Path(task.include_path).is_dir():
                found.append(f"include_path: not a directory: {task.include_path}")
    return found


# ---------------------------------------------------------------- the metrics


def perplexity(engine, task: PerplexityTask, seed: int) -> dict[str, float]:
    """Mean negative log-likelihood per scored token, and its exponential."""
    from self_model.data.sources import BadRowLog, read_source
    from self_model.template import IGNORE_INDEX

    bad = BadRowLog(task.bad_rows, fix_hint="set bad_rows: skip in the task")
    rows = read_source(task.file, bad, seed)
    if task.format == "text":
        from self_model.data.text import document_ids, documents

        sequences = [ids[:task.max_length] for ids in document_ids(documents(rows, task.text_fields, bad), engine.tokenizer)]
        scored = [[True] * (len(ids) - 1) for ids in sequences]
    else:
        from self_model.data.conversations import CONVERSATION_KEYS, row_to_messages
        from self_model.data.sources import BadRow
        from self_model.template import encode_conversation

        sequences, scored = [], []
        for row in rows:
            try:
                messages = row_to_messages(row.data, task.format, {**CONVERSATION_KEYS, **task.keys})
            except BadRow as err:
                bad.record(row.where, str(err))
                continue
            encoded = encode_conversation(messages, engine.tokenizer, engine.renderer, task.train_on, task.max_length)
            sequences.append(encoded.input_ids)
            scored.append([label != IGNORE_INDEX for label in encoded.labels[1:]])
    total, count = 0.0, 0
    for logprobs, mask in zip(engine.token_logprobs(sequences), scored):
        total -= sum(lp for lp, keep in zip(logprobs, mask) if keep)
        count += sum(mask)
    if count == 0:
        raise UserError(f"{task.file}: no scored tokens (every example empty or without trained tokens)")
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count, "examples": len(sequences)}


def accuracy(engine, task: AccuracyTask, seed: int) -> dict[str, float]:
    """Greedy: accuracy (= pass@1) and mean reward. Sampled: pass@1 (mean over samples), pass@k, maj@k."""
    from self_model.data.rl import RLDataArgs, row_to_prompt
    from self_model.data.sources import BadRow, BadRowLog, read_source
    from self_model.rlhf.rewards import TRUNCATED, call_reward, resolve

    bad = BadRowLog(task.bad_rows, fix_hint="set bad_rows: skip in the task")
    data = RLDataArgs(prompt_suffix=task.prompt_suffix, data_source=task.data_source or "eval")
    records = []
    for row in read_source(task.file, bad, seed):
        try:
            records.append(row_to_prompt(row.data, data))
        except BadRow as err:
            bad.record(row.where, str(err))
    fn = resolve(task.reward)
    k = task.samples
    sampling = Sampling(task.max_new_tokens, task.temperature if k > 1 else 0.0, task.top_p, n=k, seed=seed)
    completions = engine.generate([engine.prompt_ids(r["prompt"]) for r in records], sampling)
    rewards, first_correct, any_correct, majority_correct, lengths = [], [], [], [], []
    for record, choices in zip(records, completions):
        values = [call_reward(fn, c.text, record["ground_truth"], record["data_source"], {TRUNCATED: not c.finished})
                  for c in choices]
        correct = [v >= task.correct_at for v in values]
        rewards += values
        first_correct.append(sum(correct) / k)
        any_correct.append(any(correct))
        answers = [vote_key(c.text) for c in choices]
        majority_correct.append(correct[answers.index(Counter(answers).most_common(1)[0][0])])
        lengths += [c.completion_tokens for c in choices]
    n = len(records)
    metrics = {"mean_reward": sum(rewards) / len(rewards), "completion_tokens": sum(lengths) / len(lengths),
               "examples": n}
    if k == 1:
        return {"accuracy": sum(first_correct) / n, **metrics}
    return {"pass@1": sum(first_correct) / n, f"pass@{k}": sum(any_correct) / n, f"maj@{k}": sum(majority_correct) / n,
            **metrics}


def vote_key(completion: str) -> str:
    """What maj@k votes on: the completion's last number (commas dropped), else its whole text. Only the vote uses
    it; the winning completion is scored by the task's reward function."""
    numbers = LAST_NUMBER.findall(completion)
    return numbers[-1].replace(",", "") if numbers else completion.strip()


def lm_eval_task(engine, task: LmEvalTask, batch_size: int) -> dict[str, float]:
    """lm-eval's numeric results, as `task/metric`."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("lm_eval tasks need lm-evaluation-harness: install the eval extra (`uv sync --extra eval`)") from None
    if not hasattr(engine, "model"):
        raise UserError("lm_eval tasks run on the transformers backend: set backend: transformers")
    model = HFLM(pretrained=engine.model, tokenizer=engine.tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=task.include_path) if task.include_path else TaskManager()
    unknown = [name for name in task.tasks if name not in manager.all_tasks]
    if unknown:
        raise UserError(f"lm_eval: unknown task(s) {', '.join(unknown)}"
                        + (f" (not in lm-eval nor in {task.include_path})" if task.include_path else ""))
    # lm-eval opens a task's relative data_files from the working directory: make that the task folder
    with contextlib.chdir(task.include_path or "."):
        out = lm_eval.simple_evaluate(model=model, tasks=task.tasks, num_fewshot=task.num_fewshot, limit=task.limit,
                                      task_manager=manager, apply_chat_template=task.apply_chat_template,
                                      log_samples=False)
    return {f"{name}/{metric.replace(',none', '')}": value for name, metrics in out["results"].items()
            for metric, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


# ---------------------------------------------------------------- running and reporting


def evaluate(models: list[str], cfg: EvalConfig) -> dict[str, dict[str, dict[str, float]]]:
    """Results per model, per task: metric -> value. Models are loaded one after another."""
    from self_model.generation import open_engine

    outputs = {name: OutputDir.open(name) for name in models}  # every model checked before the first loads
    chat = any(isinstance(t, AccuracyTask) or (isinstance(t, PerplexityTask) and t.format != "text")
               or (isinstance(t, LmEvalTask) and t.apply_chat_template) for t in cfg.parsed.values())
    results = {}
    for name, output in outputs.items():
        engine = open_engine(output, cfg.backend, cfg.template, cfg.dtype, cfg.batch_size, chat=chat, seed=cfg.seed,
                             max_model_len=cfg.max_model_len)
        results[name] = {}
        for task_name, task in cfg.parsed.items():
            print(f"[{name}] {task_name} ({task.kind}) ...", flush=True)
            if isinstance(task, PerplexityTask):
                results[name][task_name] = perplexity(engine, task, cfg.seed)
            elif isinstance(task, AccuracyTask):
                results[name][task_name] = accuracy(engine, task, cfg.seed)
            else:
                results[name][task_name] = lm_eval_task(engine, task, cfg.batch_size)
        del engine
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table: one row per task and metric, one column per model."""
    models = list(results)
    rows = {(task, metric): None for model in models for task, metrics in results[model].items() for metric in metrics}
    lines = ["| task | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    for task, metric in rows:
        cells = [results[m].get(task, {}).get(metric) for m in models]
        lines.append(f"| {task} | {metric} | " + " | ".join("" if v is None else f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate output directories on an evaluation suite.",
                                     epilog="Overrides: key=value, e.g. tasks.arithmetic.samples=8 backend=vllm")
    parser.add_argument("--model", action="append", required=True,
                        help="output directory, model directory or hub id (repeat for a side-by-side table)")
    parser.add_argument("--config", required=True, help="evaluation suite YAML (config/eval/)")
    parser.add_argument("--output_dir", help="where eval.json and eval.md go (default: checkpoints/eval/<suite>)")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    cfg, resolved = load_eval_config(args.config, args.overrides)
    if len(set(args.model)) != len(args.model):
        raise UserError("--model: the same model is named twice")
    results = evaluate(args.model, cfg)
    out = Path(args.output_dir or f"checkpoints/eval/{Path(args.config).stem}")
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"results": results, "models": {m: str(Path(m).resolve()) if Path(m).exists() else m
                                                               for m in args.model}, "config": resolved}
    (out / "eval.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text = table(results)
    (out / "eval.md").write_text(text + "\n", encoding="utf-8")
    print(f"{text}\n\nsaved to {out / 'eval.json'} and {out / 'eval.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
