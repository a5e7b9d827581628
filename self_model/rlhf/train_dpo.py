"""Preference optimisation: DPO (and its loss variants: IPO, hinge, robust, ...), KTO, ORPO, CPO and SimPO via TRL.

    uv run python self_model/rlhf/train_dpo.py --config config/self_model_config/dpo.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/rlhf/train_dpo.py --config ...
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Literal

from self_model.config import Owned, RunConfig, StageSpec, from_key, import_class, option, replace_model
from self_model.data.preference import PreferenceDataArgs, build_preference_data
from self_model.errors import DataError
from self_model.memory import Workload
from self_model.modeling import build_peft_config, cuda_available, liger_available, load_model, set_stop_tokens
from self_model.stage import fit, open_stage, present_data, save_final, stage_main

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # TRL 1.12's DPOConfig
LOSS_TYPES = {
    "dpo": DPO_LOSSES,
    "kto": ("kto", "apo_zero_unpaired"),
    "orpo": (),
    "cpo": ("sigmoid", "hinge", "ipo", "simpo", "alphapo"),
    "simpo": ("simpo",),
}
WITH_REFERENCE = ("dpo", "kto")
# algorithm -> (config class, trainer class); ORPO and CPO live in trl.experimental in TRL 1.12
TRAINERS = {
    "dpo": ("trl.trainer.dpo_config:DPOConfig", "trl.trainer.dpo_trainer:DPOTrainer"),
    "kto": ("trl.trainer.kto_config:KTOConfig", "trl.trainer.kto_trainer:KTOTrainer"),
    "orpo": ("trl.experimental.orpo.orpo_config:ORPOConfig", "trl.experimental.orpo.orpo_trainer:ORPOTrainer"),
    "cpo": ("trl.experimental.cpo.cpo_config:CPOConfig", "trl.experimental.cpo.cpo_trainer:CPOTrainer"),
    "simpo": ("trl.experimental.cpo.cpo_config:CPOConfig", "trl.experimental.cpo.cpo_trainer:CPOTrainer"),
}


@dataclass
class PreferenceArgs:
    """Which preference algorithm, and the knobs every one of them has."""

    algorithm: Literal["dpo", "kto", "orpo", "cpo", "simpo"] = option(
        "dpo (DPOTrainer), kto (KTOTrainer), orpo / cpo (TRL's experimental trainers), simpo (CPO with the SimPO loss).",
        "dpo",
    )
    beta: float | None = option("The algorithm's beta (DPO/KTO/CPO/SimPO: strength of the preference; ORPO: lambda); "
                                "null keeps TRL's default.", None)
    loss_type: str | list[str] | None = option(
        "The loss variant: DPO sigmoid/ipo/hinge/robust/... (a list combines them), KTO kto/apo_zero_unpaired, "
        "CPO sigmoid/hinge/ipo/simpo; null keeps TRL's default.", None)
    ref_model: str | None = option(
        "Reference model for dpo/kto (a path or hub id); null uses the starting model: with peft the adapter is "
        "switched off (no second copy), with precompute_ref_log_probs nothing is kept in memory.", None)


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    args: PreferenceArgs = cfg.sections["dpo"]
    problems = []
    losses = [args.loss_type] if isinstance(args.loss_type, str) else args.loss_type or []
    valid = LOSS_TYPES[args.algorithm]
    for loss in losses:
        if loss not in valid:
            hint = f"valid: {', '.join(valid)}" if valid else f"{args.algorithm} has one loss: remove dpo.loss_type"
            problems.append(("dpo.loss_type", f"{loss!r} is not a loss of {args.algorithm} ({hint})"))
    if len(losses) > 1 and args.algorithm != "dpo":
        problems.append(("dpo.loss_type", f"only dpo combines several losses; {args.algorithm} takes one"))
    if args.ref_model and args.algorithm not in WITH_REFERENCE:
        problems.append(("dpo.ref_model", f"{args.algorithm} uses no reference model; remove dpo.ref_model"))
    return problems


def loss_type(cfg: RunConfig) -> str | list[str] | None:
    args: PreferenceArgs = cfg.sections["dpo"]
    return "simpo" if args.algorithm == "simpo" else args.loss_type


def training_defaults(cfg: RunConfig) -> dict:
    args: PreferenceArgs = cfg.sections["dpo"]
    defaults = {"cpo_alpha": 0.0} if args.algorithm == "simpo" else {}  # SimPO is CPO without behaviour cloning
    # TRL's Liger losses: DPO with one loss and KTO's own loss, log-probabilities not precomputed
    losses = [args.loss_type] if isinstance(args.loss_type, str) else args.loss_type or []
    fused = (args.algorithm == "dpo" and len(losses) <= 1) or (args.algorithm == "kto" and losses in ([], ["kto"]))
    if fused and not cfg.training_args.get("precompute_ref_log_probs") and cuda_available() and liger_available():
        defaults["use_liger_kernel"] = True
    else:
        defaults["use_liger_kernel"] = False  # the model kernels alone would leave TRL's unfused preference losses
    return defaults


def workload(cfg: RunConfig, args) -> Workload:
    algorithm = cfg.sections["dpo"].algorithm
    tokens = 2 * args.per_device_train_batch_size * cfg.data.max_length  # chosen and rejected (KTO: its KL batch)
    copy = algorithm in WITH_REFERENCE and not cfg.peft.enabled and not getattr(args, "precompute_ref_log_probs", False)
    return Workload(tokens, tokens, reference_copy=copy)


STAGE = StageSpec(
    name="dpo",
    training_args_class=lambda sections: TRAINERS[sections["dpo"].algorithm][0],
    sections={"dpo": PreferenceArgs},
    data_class=PreferenceDataArgs,
    owned_training_args={"beta": from_key("dpo.beta"), "loss_type": Owned("dpo.loss_type", loss_type),
                         "max_length": from_key("data.max_length")},
    training_defaults=training_defaults,
    checks=stage_checks,
    workload=workload,
)


def reference_model(cfg: RunConfig, args: PreferenceArgs, model, tokenizer, training_args):
    """The frozen reference for dpo/kto, or None where TRL needs no copy (peft, precomputed log-probs)."""
    if args.ref_model:
        ref_cfg = dataclasses.replace(replace_model(cfg, args.ref_model), peft=dataclasses.replace(cfg.peft, enabled=False))
        return load_model(ref_cfg, tokenizer, training_args)
    if cfg.peft.enabled or training_args.precompute_ref_log_probs:
        return None
    from trl.experimental.utils import create_reference_model

    return create_reference_model(model)


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    args: PreferenceArgs = cfg.sections["dpo"]
    run, training_args, tokenizer, renderer = open_stage(cfg, STAGE, dry_run)
    data = build_preference_data(cfg.data, tokenizer, training_args.seed)
    if not data.paired and args.algorithm != "kto":
        raise DataError(f"{args.algorithm} trains on pairs (chosen/rejected); unpaired rows (completion/label) "
                        "need dpo.algorithm: kto")
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    model = load_model(cfg, tokenizer, training_args)
    set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))
    reference = {"ref_model": reference_model(cfg, args, model, tokenizer, training_args)} if args.algorithm in WITH_REFERENCE else {}
    trainer = import_class(TRAINERS[args.algorithm][1])(
        model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
        peft_config=build_peft_config(cfg), **reference)
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, data, metrics, algorithm=args.algorithm)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
