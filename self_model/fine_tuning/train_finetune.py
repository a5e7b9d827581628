"""Supervised fine-tuning (full, LoRA, DoRA, QLoRA) from a YAML config.

    uv run python self_model/fine_tuning/train_finetune.py --config config/self_model_config/finetune.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/fine_tuning/train_finetune.py --config ...
"""

from __future__ import annotations

import sys

from self_model.config import Owned, RunConfig, StageSpec, from_key
from self_model.data.sft import SFTDataArgs, build_sft_data
from self_model.memory import Workload
from self_model.modeling import build_peft_config, load_model, packs, set_stop_tokens
from self_model.stage import fit, open_stage, present_data, save_final, stage_main


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    if cfg.training_args.get("packing_strategy") == "wrapped":
        return [("training_args.packing_strategy", "`wrapped` cuts examples and lets them attend to each other; use "
                 "bfd or bfd_split (each example attends only to itself)")]
    return []


def workload(cfg: RunConfig, args) -> Workload:
    tokens = args.per_device_train_batch_size * cfg.data.max_length  # packed rows are full; padded ones at most this
    return Workload(tokens, tokens, chunked_loss=args.loss_type == "chunked_nll")


STAGE = StageSpec(
    name="sft",
    training_args_class="trl.trainer.sft_config:SFTConfig",
    data_class=SFTDataArgs,
    checks=stage_checks,
    workload=workload,
    owned_training_args={
        "max_length": from_key("data.max_length"),
        "packing": Owned("data.packing", lambda cfg: packs(cfg.data.packing)),
        "padding_free": Owned("data.packing"),  # TRL's packing makes batches padding-free
        # labels come from our template's assistant spans, so TRL's own masking switches stay off
        "assistant_only_loss": Owned("data.train_on"),
        "completion_only_loss": Owned("data.train_on"),
        "dataset_text_field": Owned("data.format and data.keys"),
    },
)


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from trl import SFTTrainer

    run, training_args, tokenizer, renderer = open_stage(cfg, STAGE, dry_run)
    data = build_sft_data(cfg.data, tokenizer, renderer, training_args.seed)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    model = load_model(cfg, tokenizer, training_args, packed=training_args.packing)
    set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                         processing_class=tokenizer, peft_config=build_peft_config(cfg))
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, data, metrics)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
