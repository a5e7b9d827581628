#!/usr/bin/env python
"""SFT training throughput on one CUDA GPU: TRL SFTTrainer defaults vs our SFT stage (full, LoRA, QLoRA).

    python3 bench/sft_throughput.py                      # H100, the four modes, ~3-5 minutes
    uv run python bench/sft_throughput.py --smoke        # CPU check: tiny model, 3 steps, CUDA-only modes skipped
    python3 bench/sft_throughput.py --modes trl_defaults ours_full --steps 60 --peak-flops 989e12

Model: a random-init Qwen2.5-0.5B-shaped Qwen2 (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864,
vocab 151936, tied embeddings), SDPA attention, bf16 mixed precision, batch 8, sequences of uniformly random length
(64-2048 tokens, seeded), `max_steps` steps of which the first `--warmup` are excluded.

Modes (each in its own subprocess, so GPU memory and CUDA state are fresh and a failure cannot touch the others):
  trl_defaults  trl.SFTTrainer used directly: a float32 `from_config` model (what `from_config` gives; bf16 autocast),
                pre-tokenized `input_ids` + `labels` of the very same examples. TRL defaults except what the comparison
                needs: max_length=2048 (TRL's default 1024 would truncate), gradient_checkpointing=False (TRL 1.12's
                SFTConfig default is True; the baseline asked for is "checkpointing off"), save_strategy "no",
                report_to none, train_sampling_strategy "sequential" (see "same batches" below).
  trl_lora      the same SFTTrainer with a peft LoraConfig equal to ours_lora's (r 16, alpha 16, dropout 0.05,
                all-linear) on a bf16 `from_config` base (what from_pretrained of a bf16 checkpoint gives): the
                like-for-like baseline for ours_lora.
  ours_full     self_model/fine_tuning/train_finetune.py main() with a generated YAML: model.init_from_config (float32
                weights, as our load_model builds them), template qwen2_chatml, peft off.
  ours_lora     the same with peft {enabled, method: lora, lora_r: 16, target_modules: all-linear}.
  ours_qlora    the same with method: qlora. Our load_model only quantizes when it *loads* a checkpoint
                (model_name_or_path); with model.init_from_config it would silently train an unquantized float32 model.
                So this mode first saves the random-init model (bf16) to a temp dir and points model_name_or_path
                at it; the result records how many bitsandbytes Linear4bit modules the trained model had.

Same batches: the data file is already in random (seeded) order and every mode uses the sequential sampler, so
step k of every mode trains on the same 8 examples (the result checks this: `same_batches_as_baseline`).
Our stage tokenizes the JSONL with its own template code; the baseline gets exactly those input_ids/labels
(produced here by the same self_model.data.build_sft_data), so both paths see identical tokens and loss masks.

Timing (how, and why it is honest): our stage builds its SFTTrainer inside main(); to observe it without editing
self_model/, the worker replaces the name `SFTTrainer` in train_finetune's module namespace with a subclass that
(1) adds a TrainerCallback that calls torch.cuda.synchronize() and takes time.perf_counter() at every on_step_end
(and on_train_begin), and (2) wraps training_step to record attention_mask.sum(dim=1) of each batch (kept on the
device, no extra sync) and the returned loss. Nothing else changes: same args, model, data, collator, loss.
The baseline uses the identical subclass, so both are measured by the same code. The measured window is from the
synchronized end of step `warmup` to the synchronized end of the last step: it covers whole steps (data loading,
forward, backward, optimizer, the trainer's own bookkeeping) and excludes model building, data preparation, the
warm-up steps (CUDA/cuBLAS/SDPA autotuning, allocator growth) and the final save. The trainer's own train_runtime
(which includes warm-up) is recorded next to it as a cross-check.

Metrics per mode:
  tokens/s   non-pad tokens (sum of attention_mask) in the window / window seconds
  MFU        model FLOPs in the window / window seconds / --peak-flops (default 989e12: H100 SXM bf16 dense), with
             model FLOPs per sequence of s non-pad tokens = 6*N*s + 12*L*d*s^2 (PaLM's convention, appendix B:
             6N for the matmuls' forward+backward; 12*L*d*s^2 for QK^T and AV, forward+backward, counting the full
             s x s score matrix, i.e. not halved for the causal mask). N = parameters that take part in matmuls =
             all parameters with the tied embedding counted once (it stands for the lm_head matmul): 494.0M for
             the 0.5B shape. The same model-FLOPs formula is used for every mode, so MFU ratios equal throughput
             ratios; LoRA/QLoRA do not compute frozen-weight gradients (~4N instead of 6N hardware FLOPs per token)
             and TRL's default chunked_nll loss skips the lm_head on label -100 tokens, so hardware FLOPs are lower.
  peak GiB   torch.cuda.max_memory_allocated() at the end of training (fresh process per mode)
  loss       loss of the last step, and the mean over the window's steps
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

MODES = ("trl_defaults", "ours_full", "trl_lora", "ours_lora", "ours_qlora")
# each of our modes against the TRL run it should match (the same training, TRL used directly)
LIKE_FOR_LIKE = {"ours_full": "trl_defaults", "ours_lora": "trl_lora", "ours_qlora": "trl_lora"}
CUDA_ONLY = {"ours_qlora": "needs a CUDA GPU (bitsandbytes 4-bit)"}
TOKENIZER = "examples/tiny/tokenizer"
TEMPLATE = "qwen2_chatml"

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
    "initializer_range": 0.02,
    "attention_dropout": 0.0,
    "use_sliding_window": False,
    "tie_word_embeddings": True,
    "bos_token_id": None,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
SMOKE_MODEL = {**QWEN25_05B, "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024}


# ---------------------------------------------------------------- command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for how each mode is timed and the FLOPs formula.")
    p.add_argument("--smoke", action="store_true", help="CPU check: tiny model, lengths 64-256, 3 steps (1 warm-up)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run (default: all)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per mode (default 40; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="first steps excluded from timing (default 5; smoke 1)")
    p.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size (default 8)")
    p.add_argument("--min-len", type=int, default=64, help="shortest sequence, tokens (default 64)")
    p.add_argument("--max-len", type=int, default=None, help="longest sequence, tokens (default 2048; smoke 256)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank for ours_lora/ours_qlora (default 16)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="turn gradient checkpointing on in every mode (default off in every mode)")
    p.add_argument("--peak-flops", type=float, default=989e12,
                   help="device peak FLOP/s for MFU (default 989e12: H100 SXM bf16 dense; H200 is the same)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode-timeout", type=int, default=None, help="seconds before a mode is killed (default 240)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(REPO_ROOT / "bench" / "results"),
                   help="results folder (default $OUT, else bench/results)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the temp folder with data, configs and outputs")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (3 if args.smoke else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 5)
    args.max_len = args.max_len or (256 if args.smoke else 2048)
    args.mode_timeout = args.mode_timeout or 240
    if not 0 <= args.warmup < args.steps:
        p.error("--warmup must be at least 0 and less than --steps")
    if not 1 <= args.min_len <= args.max_len:
        p.error("need 1 <= --min-len <= --max-len")
    return args


# ---------------------------------------------------------------- data


def load_tokenizer_and_renderer():
    from transformers import AutoTokenizer

    from self_model.modeling import set_distinct_pad_token
    from self_model.template import TEMPLATE_DIR, ChatTemplate

    tokenizer = AutoTokenizer.from_pretrained(str(REPO_ROOT / TOKENIZER))
    set_distinct_pad_token(tokenizer)  # what our load_tokenizer does; the baseline uses the same tokenizer
    renderer = ChatTemplate.from_file(TEMPLATE_DIR / f"{TEMPLATE}.json")
    return tokenizer, renderer


def single_token_words(tokenizer) -> list[str]:
    """Alphabetic words that are one token when preceded by a space (so n words ~ n tokens)."""
    words = []
    for piece in tokenizer.get_vocab():
        word = piece[1:]
        single = piece.startswith("\u0120") and word.isascii() and word.isalpha()
        if single and len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
    return sorted(words)


def make_conversations(lengths: list[int], tokenizer, renderer, seed: int) -> list[list[dict]]:
    """One user+assistant conversation per target length whose rendered, tokenized length is exactly that."""
    from self_model.template import encode_conversation

    rng = random.Random(seed + 1)
    words = single_token_words(tokenizer)

    def length(user_n: int, asst_n: int, picks: list[str]) -> tuple[int, list[dict]]:
        messages = [{"role": "user", "content": " ".join(picks[:user_n])},
                    {"role": "assistant", "content": " ".join(picks[user_n:user_n + asst_n])}]
        encoded = encode_conversation(messages, tokenizer, renderer, "all_assistant", 1 << 30)
        return len(encoded.input_ids), messages

    overhead = length(1, 1, ["hello", "world"])[0] - 2
    conversations = []
    for target in lengths:
        body = max(2, target - overhead)
        picks = [rng.choice(words) for _ in range(body + 64)]
        user_n = max(1, min(body - 1, round(body * rng.uniform(0.2, 0.5))))
        asst_n = body - user_n
        for _ in range(20):
            actual, messages = length(user_n, asst_n, picks)
            if actual == target:
                break
            asst_n -= actual - target
            if asst_n < 1:
                user_n, asst_n = max(1, user_n + asst_n - 1), 1
            if user_n + asst_n > len(picks):
                picks += [rng.choice(words) for _ in range(user_n + asst_n - len(picks))]
        else:
            raise RuntimeError(f"could not build a conversation of exactly {target} tokens (got {actual})")
        conversations.append(messages)
    return conversations


def prepare(args, work: Path) -> dict:
    """Model config, JSONL for our stage, the same examples tokenized (by our own data code) for the baseline."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from self_model.data.sft import SFTDataArgs, build_sft_data

    model_dir = work / "model"
    model_dir.mkdir(parents=True)
    model_cfg = SMOKE_MODEL if args.smoke else QWEN25_05B
    (model_dir / "config.json").write_text(json.dumps(model_cfg, indent=2) + "\n")

    tokenizer, renderer = load_tokenizer_and_renderer()
    if len(tokenizer) > model_cfg["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, more than the model's vocab {model_cfg['vocab_size']}")
    n_examples = args.steps * args.batch_size
    rng = random.Random(args.seed)
    lengths = [rng.randint(args.min_len, args.max_len) for _ in range(n_examples)]
    conversations = make_conversations(lengths, tokenizer, renderer, args.seed)
    train_file = work / "sft_train.jsonl"
    with train_file.open("w", encoding="utf-8") as handle:
        for messages in conversations:
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")

    built = build_sft_data(SFTDataArgs(train_file=str(train_file), max_length=args.max_len), tokenizer, renderer, args.seed)
    ids = [list(row) for row in built.train["input_ids"]]
    labels = [list(row) for row in built.train["labels"]]
    got = [len(x) for x in ids]
    if got != lengths:
        bad = sum(a != b for a, b in zip(got, lengths)) + abs(len(got) - len(lengths))
        raise RuntimeError(f"{bad} examples do not have their target length after our tokenization")
    tokens_file = work / "tokens.json"
    tokens_file.write_text(json.dumps({"input_ids": ids, "labels": labels}))

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in meta.parameters())  # tied embedding counted once
    trained = sum(sum(1 for x in row if x != -100) for row in labels)
    return {
        "model_dir": str(model_dir),
        "model_config": model_cfg,
        "n_params": n_params,
        "train_file": str(train_file),
        "tokens_file": str(tokens_file),
        "lengths": lengths,
        "data": {"examples": n_examples, "tokens": sum(lengths), "trained_tokens": trained,
                 "mean_length": sum(lengths) / n_examples, "min_length": min(lengths), "max_length": max(lengths)},
    }


# ---------------------------------------------------------------- worker (one mode, own process)


class Recorder:
    def __init__(self):
        self.step_end: list[tuple[int, float]] = []
        self.train_begin: float | None = None
        self.seq_lengths: list = []  # per training_step: attention_mask.sum(1), on device until the end
        self.padded: list[int] = []
        self.losses: list = []
        self.peak_train: int | None = None
        self.trainer = None


def timed(trainer_class, rec: Recorder):
    """`trainer_class` plus observation only: a step-timing callback and a record of each batch's tokens and loss."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            rec.train_begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            rec.step_end.append((state.global_step, time.perf_counter()))

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                rec.peak_train = torch.cuda.max_memory_allocated()

    class Timed(trainer_class):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.add_callback(StepTimer())
            rec.trainer = self

        def training_step(self, model, inputs, *a, **k):
            mask = inputs.get("attention_mask")
            if mask is None:
                raise RuntimeError("batch has no attention_mask: cannot count non-pad tokens")
            rec.seq_lengths.append(mask.sum(dim=1).detach())
            rec.padded.append(mask.numel())
            loss = super().training_step(model, inputs, *a, **k)
            rec.losses.append(loss.detach())
            return loss

    Timed.__name__ = Timed.__qualname__ = trainer_class.__name__
    return Timed


def describe_model(model) -> dict:
    """What was actually trained: trainable/total parameters, 4-bit modules, dtype of a base weight, checkpointing."""
    n_4bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    base_dtypes = sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters() if "lora_" not in n})
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "stored_params": sum(p.numel() for p in model.parameters()),
        "linear4bit_modules": n_4bit,
        "base_param_dtypes": base_dtypes,
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
        "model_class": type(model).__name__,
    }


def run_trl(spec: dict, rec: Recorder, work: Path, lora: bool) -> None:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    tokenizer, _ = load_tokenizer_and_renderer()
    tokens = json.loads(Path(spec["tokens_file"]).read_text())
    dataset = datasets.Dataset.from_dict(tokens)
    config = AutoConfig.from_pretrained(spec["model_dir"], attn_implementation="sdpa")
    set_seed(spec["seed"])
    dtype = torch.bfloat16 if lora and torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=16, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM") if lora else None
    model.config.pad_token_id = tokenizer.pad_token_id
    args = SFTConfig(
        output_dir=str(work / "out"),
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=spec["gradient_checkpointing"],
        max_length=spec["max_len"],
        save_strategy="no",
        report_to="none",
        seed=spec["seed"],
        train_sampling_strategy="sequential",
    )
    trainer = timed(SFTTrainer, rec)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                     peft_config=peft_config)
    trainer.train()


def ours_config(spec: dict, mode: str, work: Path) -> dict:
    cfg = {
        "tokenizer_name_or_path": str(REPO_ROOT / TOKENIZER),
        "template": TEMPLATE,
        "overwrite": True,
        "model": {"attn_implementation": "sdpa"},
        "data": {"train_file": spec["train_file"], "max_length": spec["max_len"]},
        "peft": {"enabled": False},
        "trace": "none",
        "training_args": {
            "output_dir": str(work / "out"),
            "per_device_train_batch_size": spec["batch_size"],
            "max_steps": spec["steps"],
            "bf16": True,  # our check_environment turns it off on a CPU-only machine (smoke)
            "gradient_checkpointing": spec["gradient_checkpointing"],
            "save_strategy": "no",
            "seed": spec["seed"],
            "train_sampling_strategy": "sequential",
        },
    }
    if mode == "ours_qlora":
        cfg["model_name_or_path"] = spec["qlora_base"]
    else:
        cfg["model"]["init_from_config"] = str(Path(spec["model_dir"]) / "config.json")
    if mode in ("ours_lora", "ours_qlora"):
        cfg["peft"] = {"enabled": True, "method": "lora" if mode == "ours_lora" else "qlora",
                       "lora_r": spec["lora_r"], "target_modules": "all-linear"}
    return cfg


def save_random_base(spec: dict, work: Path) -> str:
    """The random-init model saved in bf16, so that our load_model takes its quantizing from_pretrained path."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    config = AutoConfig.from_pretrained(spec["model_dir"])
    set_seed(spec["seed"])
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    path = work / "qlora_base"
    model.save_pretrained(str(path))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return str(path)


def run_ours(spec: dict, mode: str, rec: Recorder, work: Path) -> None:
    import torch
    import trl
    import yaml

    from self_model.fine_tuning import train_finetune

    if mode == "ours_qlora":
        spec = {**spec, "qlora_base": save_random_base(spec, work)}
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    config_path = work / f"{mode}.yaml"
    config_path.write_text(yaml.safe_dump(ours_config(spec, mode, work), sort_keys=False))
    trl.SFTTrainer = timed(trl.SFTTrainer, rec)  # observation only (train() imports it from trl), see the docstring
    try:
        code = train_finetune.main(["--config", str(config_path)])
    except SystemExit as exc:  # our UserErrors exit with code 2 after printing the message
        code = exc.code
    if code not in (0, None):
        raise RuntimeError(f"train_finetune.main exited with {code} (see the mode's log)")


def worker(args) -> int:
    spec = json.loads(Path(args.spec).read_text())
    mode = args.worker
    work = Path(spec["work"]) / mode
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"mode": mode}
    result_path = Path(spec["work"]) / f"{mode}.result.json"
    rec = Recorder()
    started = time.perf_counter()
    try:
        import torch

        cuda = torch.cuda.is_available()
        result["device"] = torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if mode.startswith("trl_"):
            run_trl(spec, rec, work, lora=mode == "trl_lora")
        else:
            run_ours(spec, mode, rec, work)
        trainer = rec.trainer
        if trainer is None or not rec.step_end:
            raise RuntimeError("the trainer ran no timed steps")
        lengths = [[int(x) for x in t.tolist()] for t in rec.seq_lengths]
        losses = [float(x) for x in rec.losses]
        metrics = {}
        for entry in trainer.state.log_history:
            if "train_runtime" in entry:
                metrics = {k: entry[k] for k in ("train_runtime", "train_samples_per_second", "train_loss") if k in entry}
        result.update({
            "status": "ok",
            "step_end": rec.step_end,
            "train_begin": rec.train_begin,
            "seq_lengths": lengths,
            "padded_tokens": rec.padded,
            "losses": losses,
            "peak_allocated_bytes": rec.peak_train if rec.peak_train is not None else (
                torch.cuda.max_memory_allocated() if cuda else None),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            "trainer_metrics": metrics,
            "bf16": bool(trainer.args.bf16),
            "model": describe_model(trainer.model),
        })
    except BaseException as err:
        result.update({"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()})
        print(result["traceback"], file=sys.stderr, flush=True)
    result["worker_seconds"] = time.perf_counter() - started
    result_path.write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


# ---------------------------------------------------------------- driver


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()  # does not create a CUDA context in this (parent) process


def run_mode(mode: str, args, spec_path: Path, work: Path, out: Path) -> dict:
    log_path = out / f"{mode}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--spec", str(spec_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with log_path.open("w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                                  timeout=args.mode_timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - started
    result_path = work / f"{mode}.result.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        why = f"killed after {args.mode_timeout} s (--mode-timeout)" if code == "timeout" else f"worker exited with {code}"
        result = {"mode": mode, "status": "error", "error": f"{why}, no result; log tail:\n" + "\n".join(tail)}
    result["wall_seconds"] = wall
    result["log"] = str(log_path)
    return result


def summarize(result: dict, prep: dict, args) -> dict:
    """Window metrics from the worker's raw record."""
    if result.get("status") != "ok":
        return result
    cfg = prep["model_config"]
    n, layers, hidden = prep["n_params"], cfg["num_hidden_layers"], cfg["hidden_size"]
    ends = dict(result.pop("step_end"))
    seqs = result.pop("seq_lengths")
    padded = result.pop("padded_tokens")
    losses = result.pop("losses")
    steps = len(seqs)
    if steps < args.steps or max(ends) < args.steps:
        result.update(status="error", error=f"ran {steps} steps, expected {args.steps}")
        return result
    first, last = args.warmup, args.steps
    start = ends[first] if first > 0 else result["train_begin"]
    seconds = ends[last] - start
    window = seqs[first:last]
    tokens = sum(sum(s) for s in window)
    flops = sum(6 * n * s + 12 * layers * hidden * s * s for batch in window for s in batch)
    step_times = [ends[k] - ends[k - 1] for k in range(max(first, 1) + 1, last + 1)] if last > 1 else []
    peak = result.pop("peak_allocated_bytes")
    reserved = result.pop("peak_reserved_bytes")
    result.update({
        "window_steps": last - first,
        "window_seconds": seconds,
        "window_tokens": tokens,
        "window_padded_tokens": sum(padded[first:last]),
        "tokens_per_s": tokens / seconds,
        "samples_per_s": sum(len(b) for b in window) / seconds,
        "step_seconds_median": statistics.median(step_times) if step_times else None,
        "step_seconds_min": min(step_times) if step_times else None,
        "step_seconds_max": max(step_times) if step_times else None,
        "model_tflops_per_s": flops / seconds / 1e12,
        "mfu": flops / seconds / args.peak_flops,
        "peak_gib": peak / 2**30 if peak is not None else None,
        "peak_reserved_gib": reserved / 2**30 if reserved is not None else None,
        "final_loss": losses[-1],
        "mean_window_loss": sum(losses[first:last]) / (last - first),
        "first_loss": losses[0],
        "tokens_per_step": [sum(b) for b in seqs],
        "all_seq_lengths": [s for b in seqs for s in b],
    })
    result.pop("train_begin", None)
    return result


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# SFT throughput ({report['date']})",
        "",
        f"Device: {report['device']}; torch {report['versions'].get('torch')}, transformers "
        f"{report['versions'].get('transformers')}, trl {report['versions'].get('trl')}, peft "
        f"{report['versions'].get('peft')}, bitsandbytes {report['versions'].get('bitsandbytes', 'absent')}; "
        f"python {report['python']}.",
        "",
        f"Model: {s['model']} (N = {s['n_params'] / 1e6:.1f}M matmul parameters), random init, SDPA, "
        f"{'bf16 mixed precision' if s['cuda'] else 'float32 (no GPU)'}, batch {s['batch_size']}, lengths uniform "
        f"{s['min_len']}-{s['max_len']} (seed {s['seed']}, mean {s['data']['mean_length']:.0f}), {s['steps']} steps, "
        f"first {s['warmup']} excluded; gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}; "
        f"same batches in every mode (sequential sampler over pre-shuffled data).",
        f"Tokens are non-pad tokens. MFU = (6*N*tokens + 12*L*d*s^2 per sequence) / time / {s['peak_flops']:.4g} FLOP/s.",
        "",
        "| mode | status | tokens/s | vs trl_defaults | vs like-for-like | MFU | peak GiB | median step s | final loss | trainable params | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, r in report["modes"].items():
        if r.get("status") != "ok":
            err = (r.get("error") or r.get("reason") or "").splitlines()[0][:160].replace("|", "/")
            lines.append(f"| {mode} | {r.get('status')} | - | - | - | - | - | - | - | - | {err} |")
            continue
        m = r["model"]
        notes = []
        if m["linear4bit_modules"]:
            notes.append(f"{m['linear4bit_modules']} Linear4bit")
        notes.append("base " + "/".join(m["base_param_dtypes"]))
        if m["gradient_checkpointing"]:
            notes.append("grad ckpt ON")
        if r.get("same_batches_as_baseline") is False:
            notes.append("DIFFERENT batches than baseline")
        lines.append(
            f"| {mode} | ok | {r['tokens_per_s']:,.0f} | {fmt(r.get('ratio_to_trl_defaults'), '.2f')}x | "
            f"{fmt(r.get('ratio_to_like_for_like'), '.2f')}x {r.get('like_for_like_baseline', '')} | "
            f"{100 * r['mfu']:.1f}% | {fmt(r['peak_gib'], '.1f')} | {fmt(r['step_seconds_median'], '.3f')} | "
            f"{r['final_loss']:.3f} | {m['trainable_params'] / 1e6:.1f}M | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    t0 = time.perf_counter()
    cuda = cuda_available()
    print(f"sft_throughput: {'smoke, ' if args.smoke else ''}modes {', '.join(args.modes)}; work dir {work}", flush=True)
    try:
        prep = prepare(args, work)
        print(f"data: {prep['data']['examples']} examples, {prep['data']['tokens']} tokens "
              f"({prep['data']['trained_tokens']} trained), lengths exact; N = {prep['n_params']:,} "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
        spec = {k: prep[k] for k in ("model_dir", "train_file", "tokens_file")}
        spec.update(work=str(work), batch_size=args.batch_size, steps=args.steps, max_len=args.max_len,
                    seed=args.seed, lora_r=args.lora_r, gradient_checkpointing=args.gradient_checkpointing)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))

        results: dict[str, dict] = {}
        for mode in args.modes:
            if mode in CUDA_ONLY and not cuda:
                results[mode] = {"mode": mode, "status": "skipped", "reason": CUDA_ONLY[mode]}
                print(f"[{mode}] skipped: {CUDA_ONLY[mode]}", flush=True)
                continue
            result = summarize(run_mode(mode, args, spec_path, work, out), prep, args)
            results[mode] = result
            if result.get("status") == "ok":
                print(f"[{mode}] {result['tokens_per_s']:,.0f} tokens/s, MFU {100 * result['mfu']:.1f}%, "
                      f"peak {fmt(result['peak_gib'], '.1f')} GiB, loss {result['final_loss']:.3f} "
                      f"({result['wall_seconds']:.0f} s)", flush=True)
            else:
                print(f"[{mode}] {result.get('status')}: {result.get('error')}", flush=True)

        base = results.get("trl_defaults", {})
        for mode, r in results.items():
            if r.get("status") != "ok":
                continue
            if base.get("status") == "ok":
                r["ratio_to_trl_defaults"] = r["tokens_per_s"] / base["tokens_per_s"]
                r["same_batches_as_baseline"] = r["all_seq_lengths"] == base["all_seq_lengths"]
            own = results.get(LIKE_FOR_LIKE.get(mode, ""), {})
            if own.get("status") == "ok":
                r["like_for_like_baseline"] = LIKE_FOR_LIKE[mode]
                r["ratio_to_like_for_like"] = r["tokens_per_s"] / own["tokens_per_s"]
                r["peak_ratio_to_like_for_like"] = (r["peak_gib"] / own["peak_gib"]) if own.get("peak_gib") else None
            r["same_lengths_as_data"] = r["all_seq_lengths"] == prep["lengths"][: len(r["all_seq_lengths"])]
        for r in results.values():
            r.pop("all_seq_lengths", None)

        from self_model.runs import package_versions

        versions = package_versions()
        devices = [r["device"] for r in results.values() if r.get("device")]
        model_name = "tiny Qwen2 (smoke)" if args.smoke else "Qwen2.5-0.5B-shaped Qwen2"
        report = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "device": devices[0] if devices else ("cuda" if cuda else f"cpu ({os.cpu_count()} cores)"),
            "python": platform.python_version(),
            "versions": versions,
            "settings": {
                "model": model_name, "model_config": prep["model_config"], "n_params": prep["n_params"],
                "batch_size": args.batch_size, "min_len": args.min_len, "max_len": args.max_len, "steps": args.steps,
                "warmup": args.warmup, "seed": args.seed, "lora_r": args.lora_r, "peak_flops": args.peak_flops,
                "gradient_checkpointing": args.gradient_checkpointing, "attn_implementation": "sdpa",
                "bf16": cuda, "smoke": args.smoke, "cuda": cuda, "tokenizer": TOKENIZER, "template": TEMPLATE,
                "data": prep["data"], "save_strategy": "no", "report_to": "none",
                "train_sampling_strategy": "sequential (data pre-shuffled with the seed)",
            },
            "formula": "model FLOPs per sequence of s non-pad tokens = 6*N*s + 12*L*d*s^2; MFU = window FLOPs / "
                       "window seconds / peak_flops; window = synchronized end of step `warmup` to end of last step",
            "total_seconds": time.perf_counter() - t0,
            "modes": results,
        }
        stem = "sft_throughput_smoke" if args.smoke else "sft_throughput"
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        table = markdown(report)
        (out / f"{stem}.md").write_text(table)
        print(f"\nwrote {out / (stem + '.json')} and {out / (stem + '.md')} ({report['total_seconds']:.0f} s in all)\n")
        print(table, flush=True)
        ok = [r for r in results.values() if r.get("status") == "ok"]
        return 0 if ok and all(r.get("status") in ("ok", "skipped") for r in results.values()) else 1
    finally:
        if args.keep_workdir:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
