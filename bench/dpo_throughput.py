#!/usr/bin/env python
"""DPO with LoRA on one CUDA GPU: our DPO stage's defaults against TRL's DPOTrainer defaults, and against TRL used
directly with the same switches.

    python3 bench/dpo_throughput.py --shape 0.5b
    uv run python bench/dpo_throughput.py --shape smoke --steps 3 --warmup 1   # CPU check of the script

Model: a random-init Qwen2.5 shape saved in bf16, LoRA r 16 / alpha 32 / dropout 0.05 on all linear layers, beta 0.1,
sigmoid loss, batch 8 pairs, max_length 1024; the reference is the base with the adapter switched off in every mode.
Pairs: prompt 64-512 tokens, chosen and rejected 32-512 tokens each (uniform, seeded), from single-token words.
  trl_dpo   DPOTrainer with TRL's defaults (gradient checkpointing on, TRL's loss, SDPA).
  trl_fast  DPOTrainer with this project's switches set by hand: Liger's fused DPO loss, checkpointing off.
  ours      self_model/rlhf/train_dpo.py with a YAML naming model, data, LoRA, beta, batch and steps only.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from common import (
    TEMPLATE,
    TOKENIZER,
    Recorder,
    bench_parser,
    describe_model,
    drive,
    load_tokenizer_and_renderer,
    measure_stage,
    new_spec,
    single_token_words,
    timed,
    window,
    worker_main,
    write_jsonl,
)

MODES = ("trl_dpo", "trl_fast", "ours")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def common_args(spec: dict, work: Path) -> dict:
    return {"output_dir": str(work / "out"), "per_device_train_batch_size": spec["batch_size"], "max_steps": spec["steps"],
            "learning_rate": 5e-6, "save_strategy": "no", "seed": spec["seed"], "train_sampling_strategy": "sequential"}


def trl_run(mode: str, spec: dict, work: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from self_model.modeling import liger_available

    tokenizer, _ = load_tokenizer_and_renderer()
    rows = [json.loads(line) for line in Path(spec["pairs"]).read_text().splitlines()]
    pairs = [{"prompt": [{"role": "user", "content": r["prompt"]}], "chosen": [{"role": "assistant", "content": r["chosen"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"], attn_implementation="sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    switches = {"use_liger_kernel": liger_available(), "gradient_checkpointing": False} if mode == "trl_fast" else {}
    if not torch.cuda.is_available():
        switches["bf16"] = False  # TRL's default needs a GPU (the smoke run)
    args = DPOConfig(**common_args(spec, work), beta=0.1, loss_type="sigmoid", max_length=spec["max_length"],
                     report_to="none", **switches)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    rec = Recorder()
    trainer = timed(DPOTrainer, rec)(model=model, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                                     processing_class=tokenizer, peft_config=lora)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {**window(rec, spec["warmup"], spec["steps"], spec["shape"]), "model": describe_model(trainer.model)}


def ours_run(spec: dict, work: Path) -> dict:
    from self_model.rlhf import train_dpo

    config = {"model_name_or_path": spec["checkpoint"], "tokenizer_name_or_path": str(TOKENIZER), "template": TEMPLATE,
              "overwrite": True, "data": {"train_file": spec["pairs"], "max_length": spec["max_length"]},
              "dpo": {"algorithm": "dpo", "beta": 0.1, "loss_type": "sigmoid"},
              "peft": {"enabled": True, "lora_r": LORA["r"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"],
                       "target_modules": "all-linear"},
              "trace": "none", "training_args": common_args(spec, work)}
    rec = Recorder()
    original = train_dpo.import_class
    train_dpo.import_class = lambda target: timed(original(target), rec) if target.endswith("Trainer") else original(target)
    return measure_stage(train_dpo.main, config, work, rec, spec)


def run(mode: str, spec: dict, work: Path) -> dict:
    return ours_run(spec, work) if mode == "ours" else trl_run(mode, spec, work)


def make_pairs(count: int, seed: int, short: bool) -> list[dict]:
    tokenizer, _ = load_tokenizer_and_renderer()
    rng = random.Random(seed)
    words = single_token_words(tokenizer)
    text = lambda low, high: " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))
    return [{"prompt": text(16, 64) if short else text(64, 512), "chosen": text(8, 32) if short else text(32, 512),
             "rejected": text(8, 32) if short else text(32, 512)} for _ in range(count)]


def main(argv=None) -> int:
    args = bench_parser(__doc__, "0.5b", MODES, list(MODES), steps=25, warmup=5).parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec, run)
    spec = new_spec(args, "dpo_bench_", max_length=1024, lora=LORA)
    pairs = make_pairs(args.steps * args.batch_size, args.seed, args.shape == "smoke")
    spec["pairs"] = str(write_jsonl(Path(spec["work"]) / "pairs.jsonl", pairs))
    return drive(Path(__file__).resolve(), spec, args.modes, Path(args.out), args.mode_timeout, f"dpo_{args.shape}",
                 "trl_dpo", {"ours": "trl_fast"})


if __name__ == "__main__":
    sys.exit(main())
