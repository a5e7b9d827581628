"""Steps every stage script shares: training arguments, data report and preview, final save."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from self_model.config import RunConfig, StageSpec, import_class, load_config
from self_model.data.built import BuiltData
from self_model.errors import ConfigError, exit_on_user_error
from self_model.modeling import check_environment, load_tokenizer
from self_model.runs import RunDir, is_main_process
from self_model.template import IGNORE_INDEX, ChatTemplate, Renderer, load_renderer, use_chat_template
from self_model.tracking import finish_runs, setup_tracking, start_runs, tensorboard_dir

logger = logging.getLogger("self_model")


def stage_main(stage: StageSpec, train: Callable[..., Any]) -> Callable[[list[str] | None], int]:
    """A stage script's command-line entry: parse the config, run `train(cfg, dry_run=...)`; user errors exit with 2."""

    @exit_on_user_error
    def main(argv: list[str] | None = None) -> int:
        setup_logging()
        cfg, args = load_config(stage, argv)
        train(cfg, dry_run=args.dry_run)
        return 0

    return main


def setup_logging() -> None:
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def say(message: str) -> None:
    """A line for the user, printed by rank 0 only."""
    if is_main_process():
        print(message, flush=True)


def build_training_args(cfg: RunConfig, stage: StageSpec, owned: bool = True):
    """The stage's TRL/transformers config: our defaults, the user's training_args, and the fields our sections own
    (`owned` False leaves those out, for a backend that does not train through this config)."""
    values = {**stage.default_values(cfg), **cfg.training_args, **(stage.owned_values(cfg) if owned else {})}
    for notice in check_environment(cfg, values):
        say(f"note: {notice}")
    report_to = setup_tracking(cfg.trace, values["output_dir"], values.get("run_name"))
    if "tensorboard" in report_to:
        values.setdefault("logging_dir", tensorboard_dir(values["output_dir"]))
    try:
        return import_class(stage.args_class_path(cfg.sections))(**values, report_to=report_to)
    except ValueError as err:
        raise ConfigError([f"training_args: {str(err).strip()}"], cfg.source) from None


def open_stage(cfg: RunConfig, stage: StageSpec, dry_run: bool, chat: bool = True, owned: bool = True):
    """The first steps of every stage: output_dir policy, training arguments, tokenizer and, for chat data, the
    template (also set as the tokenizer's chat template, which TRL's trainers and vLLM render with)."""
    run = RunDir.prepare(cfg, dry_run=dry_run)
    training_args = build_training_args(cfg, stage, owned)
    tokenizer = load_tokenizer(cfg)
    renderer = None
    if chat:
        renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
        use_chat_template(tokenizer, renderer)
    return run, training_args, tokenizer, renderer


def fit(trainer, run: RunDir, eval_before: bool) -> dict:
    """Train (resuming when asked), evaluating before (optional) and after; trackers are closed whatever happens."""
    args = trainer.args
    start_runs(args.report_to, args.output_dir, args.run_name)
    metrics = {}
    try:
        if eval_before and trainer.is_deepspeed_enabled:
            # transformers 5.10: ZeRO-1/2 refuse inference, and a ZeRO-3 evaluate() before train() breaks training
            say("note: eval_before_training skipped: transformers cannot evaluate before training under DeepSpeed")
        elif trainer.eval_dataset is not None and eval_before:
            metrics.update({f"{key}_before": value for key, value in trainer.evaluate().items() if key in DESCRIBED_METRICS})
        resume = {"resume_from_checkpoint": run.resume_checkpoint} if run.resume_checkpoint else {}
        result = trainer.train(**resume)
        metrics.update(result.metrics if result is not None else {})  # TRL's experimental PPO returns nothing
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
    finally:
        finish_runs(args.report_to)
    return metrics


DESCRIBED_METRICS = {  # metric key -> how the final line names it
    "eval_loss": "eval loss",
    "eval_perplexity": "perplexity",
    "eval_accuracy": "pairwise accuracy",
    "eval_margin": "mean margin",
    "eval_rewards/accuracies": "reward accuracy",
    "eval_rewards/margins": "reward margin",
}


def describe_metrics(metrics: dict) -> str:
    """`eval loss 7.53 -> 3.08, train loss 4.02` from whatever of these the run produced."""
    parts = []
    for key, name in DESCRIBED_METRICS.items():
        if key in metrics:
            before = f"{metrics[key + '_before']:.4g} -> " if key + "_before" in metrics else ""
            parts.append(f"{name} {before}{metrics[key]:.4g}")
    if "train_loss" in metrics:
        parts.append(f"train loss {metrics['train_loss']:.4f}")
    if "reward_first" in metrics:
        parts.append(f"mean reward {metrics['reward_first']:.3f} (first logged step) -> {metrics['reward_last']:.3f} (last)")
    return ", ".join(parts) or "no metrics"


def highlight(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """The decoded example with trained tokens marked (green on a terminal, ⟦…⟧ otherwise)."""
    start, end = ("\033[92m", "\033[0m") if sys.stdout.isatty() else ("⟦", "⟧")
    pieces, run, trained = [], [], False
    for token, label in zip(input_ids, labels):
        is_trained = label != IGNORE_INDEX
        if is_trained != trained and run:
            text = tokenizer.decode(run)
            pieces.append(f"{start}{text}{end}" if trained else text)
            run = []
        run.append(token)
        trained = is_trained
    if run:
        text = tokenizer.decode(run)
        pieces.append(f"{start}{text}{end}" if trained else text)
    return "".join(pieces)


def report_data(data: BuiltData, tokenizer, preview_examples: int) -> None:
    """Statistics, skipped rows and the first examples with their trained tokens marked."""
    for split, stats in data.stats.items():
        for line in stats.lines(split):
            say(line)
    if data.bad_rows.total:
        say(data.bad_rows.summary())
    for index, row in enumerate(data.preview_rows()[:preview_examples]):
        title = row.get("title", f"example {index}")
        say(f"--- {title} (trained tokens marked) ---\n{highlight(tokenizer, row['input_ids'], row['labels'])}")


def present_data(run: RunDir, cfg: RunConfig, data: BuiltData, tokenizer, dry_run: bool) -> bool:
    """Report the data; a dry run also writes the preview and the resolved config. Returns True when the run ends
    here (a dry run)."""
    report_data(data, tokenizer, cfg.data.preview_examples)
    if not dry_run:
        return False
    rows = data.preview_rows()
    path = run.write_jsonl("preview.jsonl", rows)
    run.write_yaml("dry_run_config.yaml", cfg.resolved)
    say(f"dry run: {len(rows)} examples written to {path}; no model weights were loaded")
    return True


def save_final(trainer, tokenizer, renderer: Renderer | None, run: RunDir, cfg: RunConfig, stage: str,
               data: BuiltData, metrics: dict, **extra: Any) -> None:
    """Save model or adapter, tokenizer with the chat template, resolved config and manifest (rank 0), and say so."""
    trainer.save_model(str(run.path))
    if not trainer.is_world_process_zero():
        return
    if isinstance(renderer, ChatTemplate):
        use_chat_template(tokenizer, renderer)
        (run.path / "template.json").write_text(
            json.dumps({k: v for k, v in asdict(renderer).items()}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    tokenizer.save_pretrained(str(run.path))
    run.write_yaml("config.yaml", cfg.resolved)
    run.write_manifest(cfg, stage, {**extra, "data": data.manifest(), "metrics": metrics})
    label = ", ".join(str(v) for v in (extra.get("algorithm"), extra.get("backend")) if v)
    say(f"done{f' ({label})' if label else ''}: {describe_metrics(metrics)}; saved to {run.path}")


def save_merged(trainer, tokenizer, path) -> None:
    """Merge the trained adapters into the base weights and save a full model that loads without PEFT (rank 0)."""
    model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    if trainer.is_world_process_zero():
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
