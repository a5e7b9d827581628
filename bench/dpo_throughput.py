"""DPO with LoRA on one CUDA GPU: our DPO stage against TRL's DPOTrainer used directly, same settings, same run.

    python3 bench/dpo_throughput.py                  # H100: both modes, ~3 minutes
    uv run python bench/dpo_throughput.py --smoke    # CPU check: tiny model, 3 steps

Model: random-init Qwen2.5-0.5B shape (bench/sft_throughput.py's QWEN25_05B) with bf16 frozen weights (what loading a
bf16 checkpoint gives), LoRA r 16 / alpha 32 / dropout 0.05 on all linear layers, SDPA, bf16 autocast, beta 0.1,
sigmoid loss, batch 8 pairs, max_length 1024, reference = the base with the adapter switched off (both modes).
Pairs: prompt 64-512 tokens, chosen and rejected 32-512 tokens each (uniform, seeded), from single-token words.

Modes, each in its own process:
  trl_dpo   DPOTrainer(model, args=DPOConfig(...), peft_config=LoraConfig(...)) on the conversational rows, with the
            tokenizer's chat_template set to our qwen2_chatml template's Jinja.
  ours_dpo  self_model/rlhf/train_dpo.py main() with a generated YAML that says the same.
Both trainers get the same step-timing wrapper (bench/sft_throughput.py's `timed`): tokens are the non-pad tokens of
the chosen and rejected sequences of each batch; the window runs from the end of step `--warmup` to the last step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from sft_throughput import (  # bench/ is the script's own folder, first on sys.path
    QWEN25_05B,
    SMOKE_MODEL,
    Recorder,
    describe_model,
    load_tokenizer_and_renderer,
    single_token_words,
    timed,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

MODES = ("trl_dpo", "ours_dpo")
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}


def make_pairs(args, tokenizer) -> list[dict]:
    rng = random.Random(args.seed)
    words = single_token_words(tokenizer)
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))
    short = args.smoke
    return [{"prompt": text(rng.randint(16, 64) if short else rng.randint(64, 512)),
             "chosen": text(rng.randint(8, 32) if short else rng.randint(32, 512)),
             "rejected": text(rng.randint(8, 32) if short else rng.randint(32, 512))}
            for _ in range(args.steps * args.batch_size)]


def training_args(spec: dict, output_dir: str) -> dict:
    return {"output_dir": output_dir, "per_device_train_batch_size": spec["batch_size"], "max_steps": spec["steps"],
            "learning_rate": 5e-6, "bf16": True, "gradient_checkpointing": False, "save_strategy": "no",
            "logging_steps": 10, "seed": 0, "train_sampling_strategy": "sequential"}


def run_trl(spec: dict, rec: Recorder, work: Path) -> None:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed
    from trl import DPOConfig, DPOTrainer

    tokenizer, renderer = load_tokenizer_and_renderer()
    tokenizer.chat_template = renderer.to_jinja()
    rows = [json.loads(line) for line in Path(spec["pairs"]).read_text().splitlines()]
    conversational = [{"prompt": [{"role": "user", "content": r["prompt"]}],
                       "chosen": [{"role": "assistant", "content": r["chosen"]}],
                       "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    set_seed(0)
    config = AutoConfig.from_pretrained(spec["model_dir"])
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32, attn_implementation="sdpa")
    model.config.pad_token_id = tokenizer.pad_token_id
    values = training_args(spec, str(work / "out"))
    values["bf16"] = cuda
    args = DPOConfig(**values, beta=0.1, loss_type="sigmoid", max_length=spec["max_length"], report_to="none")
    peft = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = timed(DPOTrainer, rec)(model=model, args=args, train_dataset=datasets.Dataset.from_list(conversational),
                                     processing_class=tokenizer, peft_config=peft)
    trainer.train()


def run_ours(spec: dict, rec: Recorder, work: Path) -> None:
    import yaml

    from self_model.rlhf import train_dpo

    config = {
        "tokenizer_name_or_path": str(REPO_ROOT / "examples" / "tiny" / "tokenizer"), "template": "qwen2_chatml",
        "overwrite": True, "model": {"init_from_config": str(Path(spec["model_dir"]) / "config.json"),
                                     "attn_implementation": "sdpa"},
        "data": {"train_file": spec["pairs"], "max_length": spec["max_length"]},
        "dpo": {"algorithm": "dpo", "beta": 0.1, "loss_type": "sigmoid"},
        "peft": {"enabled": True, "method": "lora", "lora_r": LORA["r"], "lora_alpha": LORA["alpha"],
                 "lora_dropout": LORA["dropout"], "target_modules": "all-linear"},
        "trace": "none", "training_args": training_args(spec, str(work / "out")),
    }
    path = work / "dpo.yaml"
    path.write_text(yaml.safe_dump(config))
    train_dpo.import_class = _timed_trainers(train_dpo.import_class, rec)  # observation only
    code = train_dpo.main(["--config", str(path)])
    if code not in (0, None):
        raise RuntimeError(f"train_dpo.main exited with {code}")


def _timed_trainers(original, rec):
    def import_class(target):
        cls = original(target)
        return timed(cls, rec) if target.endswith("Trainer") else cls

    return import_class


def worker(mode: str, spec_path: str) -> int:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"]) / mode
    work.mkdir(parents=True, exist_ok=True)
    rec, result = Recorder(), {"mode": mode}
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        (run_trl if mode == "trl_dpo" else run_ours)(spec, rec, work)
        ends = dict(rec.step_end)
        first, last = spec["warmup"], spec["steps"]
        tokens = sum(int(t.sum()) for t in rec.seq_lengths[first:last])
        seconds = ends[last] - ends[first]
        result.update(status="ok", tokens_per_s=tokens / seconds, window_seconds=seconds, window_tokens=tokens,
                      peak_gib=(rec.peak_train or 0) / 2**30, first_loss=float(rec.losses[0]),
                      final_loss=float(rec.losses[-1]), batch_tokens=[int(t.sum()) for t in rec.seq_lengths],
                      ref_model_is_none=rec.trainer.ref_model is None, model=describe_model(rec.trainer.model),
                      device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    except BaseException as err:
        result.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        print(result["traceback"], file=sys.stderr)
    (Path(spec["work"]) / f"{mode}.json").write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU check: tiny model, short pairs, 3 steps")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 30; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 5; smoke 1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO_ROOT / "bench" / "results"))
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.spec)
    args.steps = args.steps or (3 if args.smoke else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)

    out, work = Path(args.out), Path(tempfile.mkdtemp(prefix="dpo_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(SMOKE_MODEL if args.smoke else QWEN25_05B))
    tokenizer, _ = load_tokenizer_and_renderer()
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(args, tokenizer)))
    spec = {"work": str(work), "model_dir": str(model_dir), "pairs": str(pairs), "steps": args.steps,
            "warmup": args.warmup, "batch_size": args.batch_size, "max_length": 1024}
    (work / "spec.json").write_text(json.dumps(spec))

    results = {}
    for mode in MODES:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        with (out / f"dpo_{mode}.log").open("w") as log:
            subprocess.run([sys.executable, __file__, "--worker", mode, "--spec", str(work / "spec.json")],
                           stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, timeout=600, check=False)
        result_file = work / f"{mode}.json"
        results[mode] = json.loads(result_file.read_text()) if result_file.is_file() else {"status": "error", "error": "no result"}
        print(mode, {k: v for k, v in results[mode].items() if k not in ("batch_tokens", "traceback", "model")}, flush=True)
    base, ours = results["trl_dpo"], results["ours_dpo"]
    if base.get("status") == ours.get("status") == "ok":
        ours["ratio_tokens_per_s"] = ours["tokens_per_s"] / base["tokens_per_s"]
        ours["ratio_peak"] = ours["peak_gib"] / base["peak_gib"] if base["peak_gib"] else None
        ours["same_batches"] = ours["batch_tokens"] == base["batch_tokens"]
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "settings": spec | {"lora": LORA},
              "results": results}
    (out / ("dpo_throughput_smoke.json" if args.smoke else "dpo_throughput.json")).write_text(json.dumps(report, indent=2))
    print("\n| mode | tokens/s | peak GiB | first -> final loss | ref copy |\n|---|---|---|---|---|")
    for mode, r in results.items():
        if r.get("status") == "ok":
            print(f"| {mode} | {r['tokens_per_s']:,.0f} | {r['peak_gib']:.1f} | {r['first_loss']:.4f} -> {r['final_loss']:.4f} | "
                  f"{'none' if r['ref_model_is_none'] else 'yes'} |")
    if "ratio_tokens_per_s" in ours:
        print(f"\nours / TRL: tokens/s {ours['ratio_tokens_per_s']:.3f}, peak {ours['ratio_peak'] or 0:.3f}, "
              f"same batches {ours['same_batches']}")
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
