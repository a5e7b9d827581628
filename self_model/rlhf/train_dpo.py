"""Preference optimisation: DPO (and its loss variants: IPO, hinge, robust, ...), KTO, ORPO, CPO and SimPO via TRL.

    uv run python self_model/rlhf/train_dpo.py --config config/self_model_config/dpo.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/rlhf/train_dpo.py --config ...
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from self_model.config import PreferenceDataArgs, RunConfig, StageSpec, _help  # noqa: E402
from self_model.errors import DataError  # noqa: E402
from self_model.modeling import build_peft_config, load_model, load_tokenizer, set_stop_tokens  # noqa: E402
from self_model.preference_data import build_preference_data  # noqa: E402
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
from self_model.templates import load_renderer, use_chat_template  # noqa: E402

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


@dataclass
class PreferenceArgs:
    """Which preference algorithm, and the knobs every one of them has."""

    algorithm: Literal["dpo", "kto", "orpo", "cpo", "simpo"] = _help(
        "dpo (DPOTrainer), kto (KTOTrainer), orpo / cpo (TRL's experimental trainers), simpo (CPO with the SimPO loss).",
        "dpo",
    )
    beta: float | None = _help("The algorithm's beta (DPO/KTO/CPO/SimPO: strength of the preference; ORPO: lambda); "
                               "null keeps TRL's default.", None)
    loss_type: str | list[str] | None = _help(
        "The loss variant: DPO sigmoid/ipo/hinge/robust/... (a list combines them), KTO kto/apo_zero_unpaired, "
        "CPO sigmoid/hinge/ipo/simpo; null keeps TRL's default.", None)
    ref_model: str | None = _help(
        "Reference model for dpo/kto (a path or hub id); null uses the starting model: with peft the adapter is "
        "switched off (no second copy), with precompute_ref_log_probs nothing is kept in memory.", None)


def trainer_classes(algorithm: str) -> tuple[type, type]:
    """(config class, trainer class) for an algorithm; ORPO and CPO live in trl.experimental in TRL 1.12."""
    if algorithm == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if algorithm == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


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


STAGE = StageSpec(
    name="dpo",
    training_args_class=lambda sections: trainer_classes(sections["dpo"].algorithm)[0],
    sections={"dpo": PreferenceArgs},
    data_class=PreferenceDataArgs,
    owned_training_args={"beta": "dpo.beta", "loss_type": "dpo.loss_type", "max_length": "data.max_length"},
    checks=stage_checks,
    default_output_dir="checkpoints/dpo",
)


def owned_args(cfg: RunConfig, args: PreferenceArgs) -> dict:
    """The config-class fields our sections set."""
    owned = {"max_length": cfg.data.max_length}
    if args.beta is not None:
        owned["beta"] = args.beta
    if args.algorithm == "simpo":
        owned["loss_type"] = "simpo"
        if "cpo_alpha" not in cfg.training_args:
            owned["cpo_alpha"] = 0.0  # SimPO is CPO without the behaviour-cloning term
    elif args.loss_type is not None:
        owned["loss_type"] = args.loss_type
    return owned


def reference_model(cfg: RunConfig, args: PreferenceArgs, model, tokenizer, training_args):
    """The frozen reference for dpo/kto, or None where TRL needs no copy (peft, precomputed log-probs, no reference)."""
    if args.algorithm not in WITH_REFERENCE:
        return None
    if args.ref_model:
        ref_cfg = dataclasses.replace(cfg, model_name_or_path=args.ref_model,
                                      model=dataclasses.replace(cfg.model, init_from_config=None),
                                      peft=dataclasses.replace(cfg.peft, enabled=False))
        return load_model(ref_cfg, tokenizer, training_args)
    if cfg.peft.enabled or training_args.precompute_ref_log_probs:
        return None
    from trl.experimental.utils import create_reference_model

    return create_reference_model(model)


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    args: PreferenceArgs = cfg.sections["dpo"]
    config_class, trainer_class = trainer_classes(args.algorithm)
    run = RunDir.prepare(cfg, dry_run=dry_run)
    training_args = build_training_args(cfg, config_class, **owned_args(cfg, args))
    tokenizer = load_tokenizer(cfg)
    renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
    use_chat_template(tokenizer, renderer)
    data = build_preference_data(cfg.data, tokenizer, training_args.seed, cfg.data.preview_examples)
    if not data.paired and args.algorithm != "kto":
        raise DataError(f"{args.algorithm} trains on pairs (chosen/rejected); unpaired rows (completion/label) "
                        "need dpo.algorithm: kto")
    report_data(data, tokenizer, cfg.data.preview_examples)
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None

    model = load_model(cfg, tokenizer, training_args)
    set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))
    extra = {"ref_model": reference_model(cfg, args, model, tokenizer, training_args)} if args.algorithm in WITH_REFERENCE else {}
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=build_peft_config(cfg),
        **extra,
    )
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name,
               {"algorithm": args.algorithm, "data": data.manifest(), "metrics": metrics})
    say(f"done ({args.algorithm}): {describe_metrics(metrics)}; saved to {run.path}")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
