#!/usr/bin/env python
"""Does packing change what SFT learns? Eval loss after training the same examples packed and unpacked, two seeds each.

    python3 bench/sft_packing_equivalence.py          # one GPU: packed batches take the varlen attention
    uv run python bench/sft_packing_equivalence.py --epochs 1   # CPU: packed batches take SDPA's packed masks

The demo's 600 chat examples (learnable arithmetic, words and capitals, ~45 tokens each) train a small random-init
Qwen2 (hidden 256, 4 layers) for --epochs epochs; the eval loss is over the 60 held-out examples, unpacked in every
run. "Noise" is the spread between the seeds.
- packed / unpacked: our SFT stage; packed rows of --packed-length tokens (about eight examples) one per step against
  eight examples per step, about the same number of optimizer steps. Best-fit-decreasing packing puts examples of
  similar length in a row, so `grouped` (unpacked, batches of similar length) shows what that grouping alone does.
- same batches: TRL's SFTTrainer directly on the same eight examples per step (sequential sampler), once padded with
  SDPA and once padding-free with the varlen attention: the attention path alone, step for step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT, TEMPLATE, TOKENIZER, environment, run_stage

MODEL = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 2048, "hidden_size": 256,
         "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
         "hidden_act": "silu", "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-06,
         "tie_word_embeddings": True, "use_sliding_window": False, "eos_token_id": 2, "pad_token_id": 0}


DATA = REPO_ROOT / "examples" / "tiny" / "data"


def train(packed: bool, seed: int, args, work: Path, grouped: bool = False) -> dict:
    from self_model.fine_tuning import train_finetune

    data = DATA
    run = work / f"{'packed' if packed else 'grouped' if grouped else 'unpacked'}_{seed}"
    config = {"tokenizer_name_or_path": str(TOKENIZER), "template": TEMPLATE, "overwrite": True,
              "model": {"init_from_config": str(work / "config.json")},
              "data": {"train_file": str(data / "sft_train.jsonl"), "eval_file": str(data / "sft_eval.jsonl"),
                       "max_length": args.packed_length if packed else 256, "packing": packed},
              "trace": "none",
              "training_args": {"output_dir": str(run), "per_device_train_batch_size": 1 if packed else 8,
                                "per_device_eval_batch_size": 16, "eval_packing": False, "num_train_epochs": args.epochs,
                                "learning_rate": 2e-3, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05,
                                "save_strategy": "no", "logging_steps": 10, "seed": seed,
                                **({"train_sampling_strategy": "group_by_length"} if grouped else {})}}
    run.mkdir(parents=True, exist_ok=True)
    manifest = run_stage(train_finetune.main, config, run)
    metrics = manifest["metrics"]
    return {"eval_loss": metrics["eval_loss"], "train_loss": metrics.get("train_loss"),
            "steps": round(metrics["train_steps_per_second"] * metrics["train_runtime"])}


def same_batches(padding_free: bool, args, work: Path) -> dict:
    """TRL's SFTTrainer on our tokenized examples, eight per step in file order: padded SDPA or padding-free varlen."""
    import torch
    from common import load_tokenizer_and_renderer
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from self_model import attention
    from self_model.data.sft import SFTDataArgs, build_sft_data

    tokenizer, renderer = load_tokenizer_and_renderer()
    built = build_sft_data(SFTDataArgs(train_file=str(DATA / "sft_train.jsonl"), eval_file=str(DATA / "sft_eval.jsonl"),
                                       max_length=256), tokenizer, renderer, 0)
    attention.register()
    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(work / "same_init"), attn_implementation="varlen" if padding_free
                                                 else "sdpa", dtype=torch.float32)
    model.config.use_cache = False
    config = SFTConfig(output_dir=str(work / f"same_{padding_free}"), per_device_train_batch_size=8,
                       per_device_eval_batch_size=16, num_train_epochs=args.epochs, learning_rate=2e-3,
                       lr_scheduler_type="cosine", warmup_ratio=0.05, save_strategy="no", logging_steps=1,
                       report_to="none", seed=0, train_sampling_strategy="sequential", padding_free=padding_free,
                       gradient_checkpointing=False, bf16=torch.cuda.is_available(), eval_strategy="no",
                       max_length=None)  # the examples are already truncated
    trainer = SFTTrainer(model=model, args=config, train_dataset=built.train, eval_dataset=built.eval,
                         processing_class=tokenizer)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"eval_loss": trainer.evaluate()["eval_loss"], "train_loss": sum(losses) / len(losses), "losses": losses,
            "steps": trainer.state.global_step}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--packed-length", type=int, default=360)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args(argv)
    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="packing_eq_"))
    out.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(MODEL))
    runs = {f"{'packed' if packed else 'unpacked'} seed {seed}": train(packed, seed, args, work)
            for seed in (0, 1) for packed in (True, False)}
    runs.update({f"grouped seed {seed}": train(False, seed, args, work, grouped=True) for seed in (0, 1)})
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    set_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(work / "config.json"))).save_pretrained(
        str(work / "same_init"))
    padded, flat = same_batches(False, args, work), same_batches(True, args, work)
    runs["same batches, padded SDPA"], runs["same batches, padding-free varlen"] = padded, flat
    gaps = [abs(a - b) for a, b in zip(padded.pop("losses"), flat.pop("losses"))]
    step_gap = {"first": gaps[0], "median": sorted(gaps)[len(gaps) // 2], "largest": max(gaps)}
    loss = {name: r["eval_loss"] for name, r in runs.items()}
    differences = [abs(loss[f"packed seed {s}"] - loss[f"unpacked seed {s}"]) for s in (0, 1)]
    spreads = [abs(loss[f"{kind} seed 0"] - loss[f"{kind} seed 1"]) for kind in ("packed", "unpacked")]
    grouping = [abs(loss[f"packed seed {s}"] - loss[f"grouped seed {s}"]) for s in (0, 1)]
    report = {**environment(), "bench": "sft_packing_equivalence", "settings": vars(args) | {"model": MODEL},
              "runs": runs, "packed_minus_unpacked": differences, "seed_spread": spreads,
              "packed_minus_grouped": grouping, "same_batches_largest_step_loss_gap": step_gap,
              "same_batches_eval_gap": abs(padded["eval_loss"] - flat["eval_loss"]),
              "within_noise": max(differences) <= max(spreads)}
    (out / "sft_packing_equivalence.json").write_text(json.dumps(report, indent=2))
    lines = ["| run | eval loss | train loss | optimizer steps |", "|---|---|---|---|"]
    lines += [f"| {name} | {r['eval_loss']:.4f} | {r['train_loss']:.4f} | {r['steps']} |" for name, r in runs.items()]
    lines.append(f"\n|packed - unpacked| per seed: {', '.join(f'{d:.4f}' for d in differences)}; seed spread "
                 f"(packed, unpacked): {', '.join(f'{s:.4f}' for s in spreads)}; within noise: {report['within_noise']}; "
                 f"|packed - grouped|: {', '.join(f'{g:.4f}' for g in grouping)}. Same batches, padded vs padding-free: "
                 f"eval loss gap {report['same_batches_eval_gap']:.5f}, per-step loss gap first {step_gap['first']:.2e}, "
                 f"median {step_gap['median']:.2e}, largest {step_gap['largest']:.2e}")
    (out / "sft_packing_equivalence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
