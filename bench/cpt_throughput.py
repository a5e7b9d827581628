#!/usr/bin/env python
"""Continued-pretraining throughput on one CUDA GPU: our CPT stage's defaults against a run_clm-style transformers
Trainer on the very same token blocks, on a Qwen2.5 shape and real documents.

    python3 bench/cpt_throughput.py --shape 1.5b --text c4_demo.jsonl wiki_demo.txt --tokenizer path/to/minimind
    uv run python bench/cpt_throughput.py --shape smoke --steps 3 --warmup 1 --block-size 256   # CPU check

Both modes read blocks of --block-size tokens made by our text builder (documents tokenized, EOS after each, joined,
cut into blocks), in the same order.
  hf_clm   transformers Trainer with DataCollatorForLanguageModeling (padded blocks, documents attending across each
           other inside a block), SDPA, bf16; its other defaults (no checkpointing, fused AdamW).
  ours     self_model/pretrain/train_pretrain.py with a YAML naming model, data, block size, batch and steps only:
           documents isolated through padding-free batches, varlen attention, Liger kernels, the memory plan.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common import (
    TOKENIZER,
    Recorder,
    bench_parser,
    describe_model,
    drive,
    measure_stage,
    new_spec,
    timed,
    window,
    worker_main,
)

MODES = ("hf_clm", "ours")


def data_config(spec: dict, isolate: bool) -> dict:
    return {"train_file": spec["text"], "block_size": spec["block_size"], "isolate_documents": isolate,
            "txt_documents": "line"}


def hf_run(spec: dict, work: Path) -> dict:
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    from self_model.data.text import TextDataArgs, build_text_data
    from self_model.modeling import set_distinct_pad_token

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    set_distinct_pad_token(tokenizer)
    data = build_text_data(TextDataArgs(**data_config(spec, isolate=False)), tokenizer, spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"], attn_implementation="sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    cuda = torch.cuda.is_available()
    args = TrainingArguments(output_dir=str(work / "out"), per_device_train_batch_size=spec["batch_size"],
                             max_steps=spec["steps"], bf16=cuda, save_strategy="no", report_to="none", seed=spec["seed"],
                             train_sampling_strategy="sequential")
    rec = Recorder()
    trainer = timed(Trainer, rec)(model=model, args=args, train_dataset=data.train.remove_columns("seq_lengths"),
                                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {**window(rec, spec["warmup"], spec["steps"], spec["shape"]), "model": describe_model(trainer.model)}


def ours_run(spec: dict, work: Path) -> dict:
    import transformers.trainer

    from self_model.pretrain import train_pretrain

    config = {"model_name_or_path": spec["checkpoint"], "tokenizer_name_or_path": spec["tokenizer"], "overwrite": True,
              "data": {k: v for k, v in data_config(spec, isolate=True).items() if k != "isolate_documents"},
              "trace": "none",
              "training_args": {"output_dir": str(work / "out"), "per_device_train_batch_size": spec["batch_size"],
                                "max_steps": spec["steps"], "save_strategy": "no", "seed": spec["seed"],
                                "train_sampling_strategy": "sequential"}}
    rec = Recorder()
    # observation only: train()'s `from transformers import Trainer` resolves to transformers.trainer.Trainer
    transformers.trainer.Trainer = timed(transformers.trainer.Trainer, rec)
    return measure_stage(train_pretrain.main, config, work, rec, spec)


def run(mode: str, spec: dict, work: Path) -> dict:
    return hf_run(spec, work) if mode == "hf_clm" else ours_run(spec, work)


def main(argv=None) -> int:
    p = bench_parser(__doc__, "1.5b", MODES, list(MODES), steps=20, warmup=4)
    p.add_argument("--text", nargs="+", default=[str(Path(__file__).resolve().parents[1] / "examples/tiny/data/corpus.txt")],
                   help="text sources (files, `#N` to repeat rows)")
    p.add_argument("--tokenizer", default=str(TOKENIZER))
    p.add_argument("--block-size", type=int, default=4096)
    args = p.parse_args(argv)
    if args.worker:
        return worker_main(args.worker, args.spec, run)
    spec = new_spec(args, "cpt_bench_", block_size=args.block_size, text=args.text, tokenizer=args.tokenizer)
    return drive(Path(__file__).resolve(), spec, args.modes, Path(args.out), args.mode_timeout, f"cpt_{args.shape}",
                 "hf_clm", {"ours": "hf_clm"})


if __name__ == "__main__":
    sys.exit(main())
