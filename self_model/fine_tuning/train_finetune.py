"""Supervised fine-tuning (full, LoRA, DoRA, QLoRA) from a YAML config.

    uv run python self_model/fine_tuning/train_finetune.py --config config/self_model_config/finetune.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/fine_tuning/train_finetune.py --config ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from trl import SFTConfig, SFTTrainer  # noqa: E402

from self_model.config import RunConfig, StageSpec  # noqa: E402
from self_model.data import build_sft_data  # noqa: E402
from self_model.modeling import build_peft_config, load_model, load_tokenizer, set_stop_tokens  # noqa: E402
from self_model.runs import RunDir  # noqa: E402
from self_model.stage import (  # noqa: E402
    build_training_args,
    describe_metrics,
    fit,
    report_data,
    save_final,
    say,
    stage_main,
    write_preview,
)
from self_model.templates import load_renderer  # noqa: E402

STAGE = StageSpec(
    name="sft",
    training_args_class=SFTConfig,
    owned_training_args={
        "max_length": "data.max_length",
        "packing": "data.packing",
        "assistant_only_loss": "data.train_on",
        "completion_only_loss": "data.train_on",
        "dataset_text_field": "data.format and data.keys",
    },
    default_output_dir="checkpoints/finetune",
)


def train(cfg: RunConfig, dry_run: bool = False) -> SFTTrainer | None:
    """Run the stage; returns the trainer (None for a dry run)."""
    run = RunDir.prepare(cfg, dry_run=dry_run)
    training_args = build_training_args(cfg, SFTConfig, max_length=cfg.data.max_length, packing=cfg.data.packing)
    tokenizer = load_tokenizer(cfg)
    renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
    data = build_sft_data(cfg.data, tokenizer, renderer, training_args.seed)
    report_data(data, tokenizer, cfg.data.preview_examples)
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None

    model = load_model(cfg, tokenizer, training_args)
    set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=build_peft_config(cfg),
    )
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, {"data": data.manifest(), "metrics": metrics})
    say(f"done: {describe_metrics(metrics)}; saved to {run.path}")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
