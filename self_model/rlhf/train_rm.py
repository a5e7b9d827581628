"""Reward model: a sequence-classification head on a causal LM, trained on preference pairs (TRL RewardTrainer).

    uv run python self_model/rlhf/train_rm.py --config config/self_model_config/rm.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/rlhf/train_rm.py --config ...
"""

from __future__ import annotations

import sys

from self_model.config import RunConfig, StageSpec, from_key
from self_model.data.preference import PreferenceDataArgs, build_preference_data
from self_model.errors import DataError
from self_model.memory import Workload
from self_model.modeling import build_peft_config, load_model
from self_model.stage import fit, open_stage, present_data, save_final, save_merged, say, stage_main

MERGED_DIR = "merged"  # with LoRA: the full reward model (adapter merged) that PPO loads

STAGE = StageSpec(
    name="rm",
    training_args_class="trl.trainer.reward_config:RewardConfig",
    data_class=PreferenceDataArgs,
    owned_training_args={"max_length": from_key("data.max_length")},
    # Liger's fused loss replaces a causal LM's forward; a reward model has a score head instead
    training_defaults=lambda cfg: {"liger_kernel_config": {"fused_linear_cross_entropy": False, "cross_entropy": False}},
    workload=lambda cfg, args: Workload(2 * args.per_device_train_batch_size * cfg.data.max_length, 0, lm_head=False),
)


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from transformers import AutoModelForSequenceClassification
    from trl import RewardTrainer

    run, training_args, tokenizer, renderer = open_stage(cfg, STAGE, dry_run)
    data = build_preference_data(cfg.data, tokenizer, training_args.seed)
    if not data.paired:
        raise DataError("a reward model trains on pairs (chosen/rejected); these rows are unpaired (completion/label)")
    say(f"pairs longer than data.max_length ({cfg.data.max_length}) are left out by the trainer")
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    model = load_model(cfg, tokenizer, training_args, AutoModelForSequenceClassification, num_labels=1)
    trainer = RewardTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                            processing_class=tokenizer, peft_config=build_peft_config(cfg, task_type="SEQ_CLS"))
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, data, metrics)
    if cfg.peft.enabled:
        save_merged(trainer, tokenizer, run.path / MERGED_DIR)
        say(f"reward model with the adapter merged: {run.path / MERGED_DIR} (load this one for PPO)")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
