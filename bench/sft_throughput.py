#!/usr/bin/env python
"""SFT throughput on one CUDA GPU: our SFT stage's defaults against TRL's SFTTrainer defaults, and against TRL used
directly with the same switches (what our layer costs), on Qwen2.5 shapes and heavy-tailed chat lengths.

    python3 bench/sft_throughput.py --shape 1.5b                       # full SFT: trl_defaults, trl_fast, ours
    python3 bench/sft_throughput.py --shape 7b --modes trl_lora ours_lora ours_qlora_2k ours_qlora_8k --batch-size 4
    uv run python bench/sft_throughput.py --shape smoke --steps 3 --warmup 1   # CPU check of the script

Data: lognormal chat lengths (median 400, p95 3000 tokens, capped at --max-length), one user and one assistant turn
each, built to the exact length from single-token words; every mode reads the same examples in the same order
(sequential sampler). The model is a random-init Qwen2.5 shape saved once in bf16 and loaded by every mode, as a
fine-tuning run loads a hub checkpoint.

Modes (each in its own process):
  trl_defaults   trl.SFTTrainer on our tokenized examples with TRL's defaults (gradient checkpointing on, no packing,
                 SDPA, its chunked loss); only max_length, batch, steps, seed and the sampler are set.
  trl_fast       the same SFTTrainer with this project's switches set by hand: packing (BFD, padding-free), the varlen
                 attention (self_model.attention), Liger kernels, checkpointing off: TRL used well, without our layer.
  ours           self_model/fine_tuning/train_finetune.py with a YAML that names model, data, batch and steps only.
  trl_lora       trl_defaults with a PEFT LoRA (r 16, alpha 32, dropout 0.05, all linear layers).
  ours_lora      ours with peft enabled, the same LoRA.
  ours_qlora_2k / ours_qlora_8k   ours with peft.method qlora, batch 1 packed sequence of 2,048 / 8,192 tokens.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from common import (
    TEMPLATE,
    TOKENIZER,
    Recorder,
    bench_parser,
    describe_model,
    drive,
    heavy_tailed_lengths,
    load_tokenizer_and_renderer,
    make_conversations,
    measure_stage,
    new_spec,
    timed,
    window,
    worker_main,
    write_jsonl,
)

MODES = ("trl_defaults", "trl_fast", "ours", "trl_lora", "ours_lora", "ours_qlora_2k", "ours_qlora_8k")
LIKE_FOR_LIKE = {"ours": "trl_fast", "ours_lora": "trl_lora"}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
QLORA_LENGTH = {"ours_qlora_2k": 2048, "ours_qlora_8k": 8192}


def trl_run(mode: str, spec: dict, work: Path) -> dict:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from self_model import attention
    from self_model.modeling import liger_available

    tokenizer, _ = load_tokenizer_and_renderer()
    fast = mode == "trl_fast"
    if fast:
        attention.register()
    model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"], attn_implementation="varlen" if fast else "sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    switches = {"packing": True, "use_liger_kernel": liger_available(), "gradient_checkpointing": False} if fast else {}
    if fast:
        model.config.use_cache = False
    if not torch.cuda.is_available():
        switches["bf16"] = False  # TRL's default needs a GPU (the smoke run)
    args = SFTConfig(output_dir=str(work / "out"), per_device_train_batch_size=spec["batch_size"],
                     max_steps=spec["steps"], max_length=spec["max_length"], save_strategy="no", report_to="none",
                     seed=spec["seed"], train_sampling_strategy="sequential", **switches)
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM") if mode == "trl_lora" else None
    rec = Recorder()
    trainer = timed(SFTTrainer, rec)(model=model, args=args, processing_class=tokenizer, peft_config=lora,
                                     train_dataset=datasets.Dataset.from_dict(json.loads(Path(spec["tokens"]).read_text())))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {**window(rec, spec["warmup"], spec["steps"], spec["shape"]), "model": describe_model(trainer.model)}


def ours_run(mode: str, spec: dict, work: Path) -> dict:
    import trl

    from self_model.fine_tuning import train_finetune

    batch, max_length = spec["batch_size"], spec["max_length"]
    peft = {"enabled": False}
    if mode != "ours":
        peft = {"enabled": True, "method": "qlora" if "qlora" in mode else "lora", "lora_r": LORA["r"],
                "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"], "target_modules": "all-linear"}
    if mode in QLORA_LENGTH:
        batch, max_length = 1, QLORA_LENGTH[mode]
    config = {"model_name_or_path": spec["checkpoint"], "tokenizer_name_or_path": str(TOKENIZER), "template": TEMPLATE,
              "overwrite": True, "data": {"train_file": spec["train_file"], "max_length": max_length}, "peft": peft,
              "trace": "none",
              "training_args": {"output_dir": str(work / "out"), "per_device_train_batch_size": batch,
                                "max_steps": spec["steps"], "save_strategy": "no", "seed": spec["seed"],
                                "train_sampling_strategy": "sequential"}}
    rec = Recorder()
    trl.SFTTrainer = timed(trl.SFTTrainer, rec)  # observation only: train() imports SFTTrainer from trl
    return measure_stage(train_finetune.main, config, work, rec, spec)


def run(mode: str, spec: dict, work: Path) -> dict:
    return trl_run(mode, spec, work) if mode.startswith("trl_") else ours_run(mode, spec, work)


def prepare(args, work: Path) -> dict:
    """The examples as JSONL for our stage and tokenized (by our own data code) for TRL, the same ones."""
    from self_model.data.sft import SFTDataArgs, build_sft_data

    tokenizer, renderer = load_tokenizer_and_renderer()
    longest = max([args.max_length, *[QLORA_LENGTH[m] for m in args.modes if m in QLORA_LENGTH]])
    mean = 850  # about the mean of the capped lognormal; enough rows for the packed modes' steps
    count = math.ceil(args.steps * max(args.batch_size * args.max_length, longest) / mean * 1.3)
    lengths = heavy_tailed_lengths(count, args.seed, args.max_length)
    train_file = write_jsonl(work / "sft.jsonl", [{"messages": m} for m in make_conversations(lengths, tokenizer,
                                                                                              renderer, args.seed)])
    built = build_sft_data(SFTDataArgs(train_file=str(train_file), max_length=args.max_length), tokenizer, renderer,
                           args.seed)
    tokens = work / "tokens.json"
    tokens.write_text(json.dumps({"input_ids": list(built.train["input_ids"]), "labels": list(built.train["labels"])}))
    return {"train_file": str(train_file), "tokens": str(tokens), "examples": count,
            "mean_length": sum(lengths) / count, "p95_length": sorted(lengths)[int(0.95 * count)]}


def main(argv=None) -> int:
    p = bench_parser(__doc__, "0.5b", MODES, ["trl_defaults", "trl_fast", "ours"], steps=25, warmup=5)
    p.add_argument("--max-length", type=int, default=4096)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec, run)
    spec = new_spec(args, "sft_bench_", max_length=args.max_length)
    spec.update(prepare(args, Path(spec["work"])))
    baseline = "trl_lora" if "trl_lora" in args.modes else "trl_defaults"
    return drive(Path(__file__).resolve(), spec, args.modes, Path(args.out), args.mode_timeout, f"sft_{args.shape}",
                 baseline, LIKE_FOR_LIKE)


if __name__ == "__main__":
    sys.exit(main())
