"""Steps every stage script shares: training arguments, data report and preview, final save."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from self_model.config import RunConfig, StageSpec, import_class, load_config
from self_model.data.built import BuiltData
from self_model.errors import ConfigError, UserError, exit_on_user_error
from self_model.modeling import check_environment, gpu_memory, load_tokenizer, speed_defaults, weight_dtype
from self_model.report import run_clock, write_report
from self_model.runs import RunDir, is_main_process, release_locks
from self_model.template import IGNORE_INDEX, ChatTemplate, Renderer, load_renderer, use_chat_template
from self_model.tracking import finish_runs, setup_tracking, start_runs, tensorboard_dir

logger = logging.getLogger("self_model")


def stage_main(stage: StageSpec, train: Callable[..., Any]) -> Callable[[list[str] | None], int]:
    """A stage script's command-line entry: parse the config, run `train(cfg, dry_run=...)`; user errors exit with 2."""

    @exit_on_user_error
    def main(argv: list[str] | None = None) -> int:
        setup_logging()
        cfg, args = load_config(stage, argv)
        try:
            train(cfg, dry_run=args.dry_run)
        finally:
            release_locks()
        return 0

    return main


class _DocumentsApartFilter(logging.Filter):
    """Drops TRL's warning that only flash-attention keeps packed examples apart: this project's varlen attention and
    SDPA's packed masks keep them apart too (tests/test_attention.py), and load_model refuses a model that does not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "not set to a supported Flash Attention variant" not in record.getMessage()


def setup_logging() -> None:
    level = logging.INFO if is_main_process() else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("trl.trainer.sft_trainer").addFilter(_DocumentsApartFilter())


def say(message: str) -> None:
    """A line for the user, printed by rank 0 only."""
    if is_main_process():
        print(message, flush=True)


def build_training_args(cfg: RunConfig, stage: StageSpec, owned: bool = True):
    """The stage's TRL/transformers config: our defaults, the user's training_args, and the fields our sections own
    (`owned` False leaves those out, for a backend that does not train through this config)."""
    defaults = {**speed_defaults(cfg), **stage.default_values(cfg)}
    if stage.workload is None:  # no memory plan: leave the speed switches to the backend
        defaults = stage.default_values(cfg)
    values = {**{k: v for k, v in defaults.items() if k not in cfg.training_args}, **cfg.training_args,
              **(stage.owned_values(cfg) if owned else {})}
    hub_token = values.pop("hub_token", None)
    if hub_token:  # huggingface_hub reads it from here; in the arguments it would be pickled into training_args.bin
        os.environ["HF_TOKEN"] = hub_token
    for notice in check_environment(cfg, values):
        say(f"note: {notice}")
    report_to = setup_tracking(cfg.trace, values["output_dir"], values.get("run_name"))
    if "tensorboard" in report_to:
        values.setdefault("logging_dir", tensorboard_dir(values["output_dir"]))
    try:
        return import_class(stage.args_class_path(cfg.sections))(**values, report_to=report_to)
    except ValueError as err:
        raise ConfigError([f"training_args: {str(err).strip()}"], cfg.source) from None


def apply_memory_plan(cfg: RunConfig, stage: StageSpec, args) -> dict | None:
    """Print the memory plan; with model.gradient_checkpointing: auto, checkpoint only where the run needs it to fit.
    Returns the plan as the manifest records it (None where the model's config cannot be read for it)."""
    from self_model import memory

    try:
        shape = memory.model_shape(cfg)
    except (AttributeError, KeyError, TypeError, ValueError, OSError) as err:  # an architecture the estimate cannot read
        say(f"note: no memory plan for this model ({type(err).__name__}: {err}); gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}")
        return None
    result = memory.plan(cfg, shape, stage.workload(cfg, args), weight_dtype(cfg, args, shape.dtype),
                         bool(getattr(args, "use_liger_kernel", False)), gpu_memory(), cfg.model.gradient_checkpointing)
    for line in result.lines():
        say(line)
    args.gradient_checkpointing = result.checkpointing
    return result.summary()


def open_stage(cfg: RunConfig, stage: StageSpec, dry_run: bool, chat: bool = True, owned: bool = True,
               last_checkpoint=None):
    """The first steps of every stage: output_dir policy, training arguments, tokenizer and, for chat data, the
    template (also set as the tokenizer's chat template, which TRL's trainers and vLLM render with).
    `last_checkpoint`: how `resume: true` finds its checkpoint, for runs that are not transformers' (verl)."""
    run = RunDir.prepare(cfg, dry_run=dry_run, last_checkpoint=last_checkpoint)
    training_args = build_training_args(cfg, stage, owned)
    if stage.workload is not None:
        run.memory_plan = apply_memory_plan(cfg, stage, training_args)
    tokenizer = load_tokenizer(cfg)
    renderer = None
    if chat:
        renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
        use_chat_template(tokenizer, renderer)
    return run, training_args, tokenizer, renderer


def fit(trainer, run: RunDir, eval_before: bool) -> dict:
    """Train (resuming when asked), evaluating before (optional) and after, under a `RunGuard` (signals, numerical
    faults, disk space); the train loss reported covers every step, those before a resume too. Trackers are closed
    whatever happens."""
    import torch
    from transformers.trainer_utils import TrainOutput

    from self_model.guards import Interrupted, RunGuard, finished_state, restored_loss_sum
    from self_model.memory import GIB

    args = trainer.args
    loss_sum_before = restored_loss_sum(run.resume_checkpoint)
    if loss_sum_before is None:
        say(f"note: {run.resume_checkpoint} does not record the loss of its steps: the train loss reported covers "
            "only the resumed steps")
    guard = RunGuard(trainer, run.numerics, loss_sum_before or 0.0)
    trainer.add_callback(guard)
    trainer.add_callback(run_clock())
    start_runs(args.report_to, args.output_dir, args.run_name)
    guard.install()
    metrics = {}
    try:
        if eval_before and trainer.is_deepspeed_enabled:
            # transformers 5.10: ZeRO-1/2 refuse inference, and a ZeRO-3 evaluate() before train() breaks training
            say("note: eval_before_training skipped: transformers cannot evaluate before training under DeepSpeed")
        elif trainer.eval_dataset is not None and eval_before:
            metrics.update({f"{key}_before": value for key, value in trainer.evaluate().items() if key in DESCRIBED_METRICS})
        resume = {"resume_from_checkpoint": run.resume_checkpoint} if run.resume_checkpoint else {}
        finished = finished_state(run.resume_checkpoint, args.max_steps)
        if finished is not None and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
            # transformers 5.10 resumed from the last step's checkpoint runs one optimizer step more than planned
            say(f"note: {Path(run.resume_checkpoint).name} is at the last step ({finished.global_step}): nothing is "
                "left to train; finishing from it")
            trainer._load_from_checkpoint(run.resume_checkpoint)
            trainer.state = finished
            result = TrainOutput(finished.global_step, 0.0, {"train_loss": 0.0})
        else:
            result = trainer.train(**resume)
        if guard.stop_signal is not None:
            raise Interrupted(interrupted_message(trainer, run, guard.stop_signal), guard.stop_signal)
        metrics.update(result.metrics if result is not None else {})  # TRL's experimental PPO returns nothing
        if "train_loss" in metrics and trainer.state.global_step:
            # the Trainer divides the loss of the resumed steps alone by every step's count
            metrics["train_loss"] += (loss_sum_before or 0.0) / trainer.state.global_step
        if guard.skipped_steps:
            metrics["skipped_steps"] = guard.skipped_steps
        if trainer.eval_dataset is not None:
            metrics.update(trainer.evaluate())
    except torch.OutOfMemoryError:
        raise UserError(out_of_memory_advice(trainer, run)) from None
    finally:
        guard.uninstall()
        finish_runs(args.report_to)
    if torch.cuda.is_available():
        metrics["peak_memory_gib"] = torch.cuda.max_memory_allocated() / GIB
    return metrics


def interrupted_message(trainer, run: RunDir, signum: int) -> str:
    """Where the stopped run saved its state and the command that continues it."""
    import signal

    from self_model.runs import last_complete_checkpoint

    checkpoint = last_complete_checkpoint(run.path)
    resume = [] if "--resume" in sys.argv else ["--resume"]
    return (f"stopped by {signal.Signals(signum).name} at step {trainer.state.global_step}; the state is saved in "
            f"{checkpoint}. Continue with: {' '.join([sys.executable, *sys.argv, *resume])}")


def out_of_memory_advice(trainer, run: RunDir) -> str:
    """What to change after the GPU ran out of memory, with the numbers of this run."""
    args = trainer.args
    planned = f"; the memory plan estimated {run.memory_plan['total_gib']:.1f} GiB" if run.memory_plan else ""
    return (f"the GPU ran out of memory at step {trainer.state.global_step}{planned}. Lower "
            f"training_args.per_device_train_batch_size ({args.per_device_train_batch_size}; raise "
            f"gradient_accumulation_steps to keep the batch), the data's max_length/block_size, "
            + ("" if args.gradient_checkpointing else "or set model.gradient_checkpointing: true, ")
            + "or train adapters (peft.enabled: true)")


DESCRIBED_METRICS = {  # metric key -> how the final line names it
    "eval_loss": "eval loss",
    "eval_perplexity": "perplexity",
    "eval_accuracy": "accuracy",
    "eval_macro_f1": "macro-F1",
    "eval_mse": "MSE",
    "eval_retrieval_cosine_recall@1": "recall@1",
    "eval_retrieval_cosine_mrr@10": "MRR@10",
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
    """Save model or adapter, tokenizer with the chat template, resolved config and manifest (rank 0), and say so.
    Everything is written into output_dir/.saving first and moved in at the end, the manifest last."""
    staged = RunDir(run.staging)
    trainer.save_model(str(staged.path))
    if not trainer.is_world_process_zero():
        return
    if isinstance(renderer, ChatTemplate):
        use_chat_template(tokenizer, renderer)
        (staged.path / "template.json").write_text(
            json.dumps({k: v for k, v in asdict(renderer).items()}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    tokenizer.save_pretrained(str(staged.path))
    staged.write_yaml("config.yaml", cfg.resolved)
    staged.memory_plan = run.memory_plan
    staged.write_manifest(cfg, stage, {**extra, "data": data.manifest(), "metrics": metrics})
    write_report(staged.path, stage, trainer.state.log_history, metrics, final_dir=run.path)
    run.publish()
    label = ", ".join(str(v) for v in (extra.get("algorithm"), extra.get("backend")) if v)
    say(f"done{f' ({label})' if label else ''}: {describe_metrics(metrics)}; saved to {run.path}")


def save_merged(trainer, tokenizer, path) -> None:
    """Merge the trained adapters into the base weights and save a full model that loads without PEFT (rank 0)."""
    model = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
    if trainer.is_world_process_zero():
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
