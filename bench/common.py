"""What the training benchmarks share: model shapes, heavy-tailed synthetic chat data, random checkpoints, the step
timer put on a trainer, one subprocess per mode, and the window metrics (tokens/s, MFU, peak memory).

Timing: the trainer of every mode (ours and the baseline alike) is the library's class with one addition: a callback
that synchronizes CUDA and reads time.perf_counter() at every step end, and a wrapper of training_step that keeps each
batch's document lengths (from attention_mask rows, or from position_ids in padding-free batches) and loss. The window
runs from the synchronized end of step `warmup` to the end of the last step, so it holds whole steps and leaves out
model building, data preparation, compilation and autotuning. Tokens are real tokens (no padding).

MFU = (6 * N * tokens + 12 * L * d * sum(document_length^2)) / seconds / peak FLOP/s, with N the parameters that take
part in matmuls (the input embedding left out unless it is tied to the head) and the attention term over documents
(a packed row's documents do not attend to each other). LoRA trains fewer FLOPs than 6N (no weight gradients of the
frozen base), so its MFU is a model-FLOPs utilisation of the same formula, for comparison only.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = REPO_ROOT / "examples" / "tiny" / "tokenizer"
TEMPLATE = "qwen2_chatml"
H200_PEAK = 989e12  # bf16 dense FLOP/s of an H100/H200 SXM

_QWEN = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "rope_theta": 1000000.0,
         "rms_norm_eps": 1e-06, "initializer_range": 0.02, "attention_dropout": 0.0, "use_sliding_window": False,
         "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": 2, "pad_token_id": 0}
SHAPES = {  # Qwen2.5 shapes
    "0.5b": {**_QWEN, "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "1.5b": {**_QWEN, "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "7b": {**_QWEN, "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False},
    "smoke": {**_QWEN, "vocab_size": 2048, "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True},
}


# ---------------------------------------------------------------- data


def load_tokenizer_and_renderer():
    from transformers import AutoTokenizer

    from self_model.modeling import set_distinct_pad_token
    from self_model.template import TEMPLATE_DIR, ChatTemplate

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    set_distinct_pad_token(tokenizer)
    renderer = ChatTemplate.from_file(TEMPLATE_DIR / f"{TEMPLATE}.json")
    tokenizer.chat_template = renderer.to_jinja()
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


def heavy_tailed_lengths(n: int, seed: int, max_length: int, median: int = 400, p95: int = 3000) -> list[int]:
    """Chat lengths from a lognormal with the given median and 95th percentile, capped at max_length."""
    rng = random.Random(seed)
    sigma = math.log(p95 / median) / 1.645
    return [max(48, min(max_length, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def make_conversations(lengths: list[int], tokenizer, renderer, seed: int) -> list[list[dict]]:
    """One user+assistant conversation per target length whose rendered, tokenized length is that (or, where word
    boundaries do not allow it, the closest)."""
    from self_model.template import encode_conversation

    rng = random.Random(seed + 1)
    words = single_token_words(tokenizer)

    def measure(user_n: int, reply_n: int, picks: list[str]) -> tuple[int, list[dict]]:
        messages = [{"role": "user", "content": " ".join(picks[:user_n])},
                    {"role": "assistant", "content": " ".join(picks[user_n:user_n + reply_n])}]
        return len(encode_conversation(messages, tokenizer, renderer, "all_assistant", 1 << 30).input_ids), messages

    overhead = measure(1, 1, ["hello", "world"])[0] - 2
    conversations = []
    for target in lengths:
        body = max(2, target - overhead)
        picks = [rng.choice(words) for _ in range(body + 64)]
        user_n = max(1, min(body - 1, round(body * rng.uniform(0.2, 0.5))))
        reply_n = body - user_n
        best = None
        for _ in range(20):
            actual, messages = measure(user_n, reply_n, picks)
            if best is None or abs(actual - target) < abs(best[0] - target):
                best = actual, messages
            if actual == target:
                break
            reply_n -= actual - target
            if reply_n < 1:
                user_n, reply_n = max(1, user_n + reply_n - 1), 1
            if user_n + reply_n > len(picks):
                picks += [rng.choice(words) for _ in range(user_n + reply_n - len(picks))]
        conversations.append(best[1])  # within a token or two where word boundaries do not allow exactly `target`
    return conversations


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def save_random_checkpoint(shape: str, path: Path, seed: int = 0) -> Path:
    """A random-init model of a shape saved in bf16, as a fine-tuning run would find a hub checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**SHAPES[shape], "dtype": "bfloat16"}, indent=2))
    config = AutoConfig.from_pretrained(str(path))
    set_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    model.save_pretrained(str(path))
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return path


def matmul_params(shape: str) -> int:
    """N of the FLOPs formula: every parameter except an untied input embedding."""
    c = SHAPES[shape]
    h, i, layers, kv = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_key_value_heads"]
    kv_dim = kv * h // c["num_attention_heads"]
    per_layer = h * h + 2 * h * kv_dim + h * h + 3 * h * i + h + 2 * kv_dim + 2 * h  # q k v o, MLP, biases, norms
    return layers * per_layer + h + c["vocab_size"] * h


# ---------------------------------------------------------------- the step timer


class Recorder:
    def __init__(self):
        self.step_end: list[tuple[int, float]] = []
        self.batches: list = []  # per training_step: ("rows", attention_mask.sum(1)) or ("packed", position_ids)
        self.losses: list = []
        self.trainer = None


def timed(trainer_class, rec: Recorder):
    """`trainer_class` plus observation only: a synchronizing step timer and a record of each batch's documents."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            rec.step_end.append((state.global_step, time.perf_counter()))

    class Timed(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(StepTimer())
            rec.trainer = self

        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            if mask is not None and "chosen_input_ids" not in inputs:
                rec.batches.append(("rows", mask.sum(dim=1).detach()))
            elif "position_ids" in inputs:
                rec.batches.append(("packed", inputs["position_ids"].detach().clone()))
            else:  # a preference batch: the chosen and rejected rows
                rows = [inputs[k].sum(dim=1).detach() for k in inputs if k.endswith("attention_mask")]
                rec.batches.append(("rows", torch.cat(rows)))
            loss = super().training_step(model, inputs, *args, **kwargs)
            rec.losses.append(loss.detach())
            return loss

    Timed.__name__ = Timed.__qualname__ = trainer_class.__name__
    return Timed


def documents(kind: str, tensor) -> list[int]:
    """Document lengths of a recorded batch."""
    if kind == "rows":
        return [int(x) for x in tensor.tolist()]
    from self_model.attention import document_boundaries

    cu_seqlens, _ = document_boundaries(tensor.view(-1)[None])
    return (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()


def describe_model(model) -> dict:
    """What was trained: trainable/total parameters, 4-bit modules, base dtypes, checkpointing, attention."""
    return {
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "linear4bit_modules": sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit"),
        "base_param_dtypes": sorted({str(p.dtype).replace("torch.", "") for n, p in model.named_parameters()
                                     if "lora_" not in n}),
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None),
    }


def window(rec: Recorder, warmup: int, steps: int, shape: str, peak_flops: float = H200_PEAK) -> dict:
    """tokens/s, MFU and step times over the timed window of a finished run."""
    ends = dict(rec.step_end)
    if len(rec.batches) < steps or max(ends, default=0) < steps:
        raise RuntimeError(f"ran {len(rec.batches)} steps, expected {steps}")
    accumulation = len(rec.batches) // steps  # training_step calls per optimizer step
    docs = [documents(kind, t) for kind, t in rec.batches[warmup * accumulation: steps * accumulation]]
    seconds = ends[steps] - ends[warmup]
    tokens = sum(sum(d) for d in docs)
    c = SHAPES[shape]
    flops = 6 * matmul_params(shape) * tokens + 12 * c["num_hidden_layers"] * c["hidden_size"] * sum(
        n * n for d in docs for n in d)
    step_times = [ends[k] - ends[k - 1] for k in range(warmup + 1, steps + 1)]
    losses = [float(x) for x in rec.losses]
    return {"window_steps": steps - warmup, "window_seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "documents_per_step": statistics.mean(len(d) for d in docs), "mfu": flops / seconds / peak_flops,
            "step_seconds_median": statistics.median(step_times), "first_loss": losses[0], "final_loss": losses[-1]}


# ---------------------------------------------------------------- one process per mode


def run_worker(script: Path, mode: str, spec_path: Path, out: Path, timeout: int) -> dict:
    """Run `script --worker MODE --spec FILE` in a fresh process; its result JSON, or the error and the log's tail."""
    log_path = out / f"{script.stem}_{mode}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}
    result_path = spec_path.parent / f"{mode}.result.json"
    started = time.perf_counter()
    with log_path.open("w") as log:
        try:
            code = subprocess.run([sys.executable, str(script), "--worker", mode, "--spec", str(spec_path)], stdout=log,
                                  stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT), timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = f"killed after {timeout} s"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-15:])
        result = {"mode": mode, "status": "error", "error": f"worker exited with {code}, no result; log tail:\n{tail}"}
    result["wall_seconds"] = time.perf_counter() - started
    return result


def worker_main(mode: str, spec_path: str, run) -> int:
    """The body of a worker process: `run(mode, spec, work)` returns the mode's result (mode `checkpoint` saves the
    spec's random checkpoint instead); errors are recorded."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"]) / mode
    work.mkdir(parents=True, exist_ok=True)
    result = {"mode": mode}
    try:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        if mode == "checkpoint":
            save_random_checkpoint(spec["shape"], Path(spec["checkpoint"]), spec["seed"])
        else:
            result.update(run(mode, spec, work))
        result["status"] = "ok"
        if torch.cuda.is_available():
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            result["device"] = torch.cuda.get_device_name(0)
    except BaseException as err:  # recorded for the report; the driver goes on with the next mode
        result.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        print(result["traceback"], file=sys.stderr, flush=True)
    (Path(spec["work"]) / f"{mode}.result.json").write_text(json.dumps(result, default=str))
    return 0 if result["status"] == "ok" else 1


def measure_stage(main, config: dict, work: Path, rec: Recorder, spec: dict) -> dict:
    """Our stage run on `config` with its trainer timed by `rec` (the caller has put `timed` in place)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    manifest = run_stage(main, config, work)
    return {**window(rec, spec["warmup"], spec["steps"], spec["shape"]), "model": describe_model(rec.trainer.model),
            "manifest": {k: manifest.get(k) for k in ("memory_plan", "metrics")}}


def bench_parser(doc: str, shape: str, modes: tuple[str, ...], default_modes: list[str], steps: int, warmup: int):
    """The command line every training benchmark shares; the script adds its own options."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--shape", choices=SHAPES, default=shape)
    p.add_argument("--modes", nargs="+", choices=modes, default=default_modes)
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode-timeout", type=int, default=420)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p


def new_spec(args, prefix: str, **fields) -> dict:
    """The spec a run's workers read: the shared settings, a fresh work folder, the checkpoint's place, `fields`."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix=prefix))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return {"work": str(work), "shape": args.shape, "checkpoint": str(work / "checkpoint"), "steps": args.steps,
            "warmup": args.warmup, "batch_size": args.batch_size, "seed": args.seed, **fields}


def drive(script: Path, spec: dict, modes: list[str], out: Path, timeout: int, stem: str, baseline: str,
          like_for_like: dict[str, str]) -> int:
    """Save the spec's checkpoint, run each mode in its own process, write `stem`.json and .md to `out`."""
    spec_path = Path(spec["work"]) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    made = run_worker(script, "checkpoint", spec_path, out, timeout)
    if made.get("status") != "ok":
        print(f"could not save the {spec['shape']} checkpoint: {made.get('error')}", flush=True)
        return 1
    results = {}
    for mode in modes:
        results[mode] = result = run_worker(script, mode, spec_path, out, timeout)
        plan_error(result)
        print(f"[{mode}] {result.get('status')}: " + (f"{result['tokens_per_s']:,.0f} tokens/s, MFU "
              f"{100 * result['mfu']:.1f}%, peak {result.get('peak_gib', 0):.1f} GiB ({result['wall_seconds']:.0f} s)"
              if result.get("status") == "ok" else str(result.get("error"))[:2000]), flush=True)
    report = {**environment(), "bench": script.stem, "settings": {k: v for k, v in spec.items() if k != "work"},
              "results": results}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    text = table(results, baseline, like_for_like)
    (out / f"{stem}.md").write_text(text)
    print(text, flush=True)
    return 0 if all(r.get("status") == "ok" for r in results.values()) else 1


def run_stage(main, config: dict, work: Path) -> dict:
    """Our stage's main() on a generated YAML; returns its manifest (memory plan, metrics)."""
    import yaml

    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        code = main(["--config", str(path)])
    except SystemExit as exc:  # our UserErrors exit with code 2 after printing the message
        code = exc.code
    if code not in (0, None):
        raise RuntimeError(f"the stage exited with {code} (see the log)")
    return json.loads((Path(config["training_args"]["output_dir"]) / "manifest.json").read_text())


def plan_error(result: dict) -> None:
    """The memory plan's estimate against the measured peak, where both exist."""
    plan = (result.get("manifest") or {}).get("memory_plan")
    if plan and result.get("peak_gib"):
        result["plan_gib"] = plan["total_gib"]
        result["plan_error"] = plan["total_gib"] / result["peak_gib"] - 1


def environment() -> dict:
    from self_model.runs import device_description, package_versions

    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "device": device_description(),
            "python": platform.python_version(), "versions": package_versions()}


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(results: dict, baseline: str, like_for_like: dict[str, str]) -> str:
    """A Markdown table: tokens/s, ratios to the baseline and to the like-for-like mode, MFU, peak, plan error."""
    lines = ["| mode | tokens/s | x baseline | x like-for-like | MFU | peak GiB | plan GiB (error) | median step s | "
             "loss first -> last | notes |", "|---|---|---|---|---|---|---|---|---|---|"]
    base = results.get(baseline, {})
    for mode, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {mode} | {r.get('status')} | | | | | | | | {(r.get('error') or '').splitlines()[0][:150]} |")
            continue
        ratio = r["tokens_per_s"] / base["tokens_per_s"] if base.get("status") == "ok" else None
        other = results.get(like_for_like.get(mode, ""), {})
        like = r["tokens_per_s"] / other["tokens_per_s"] if other.get("status") == "ok" else None
        plan = f"{r['plan_gib']:.1f} ({100 * r['plan_error']:+.0f}%)" if "plan_error" in r else "-"
        m = r.get("model", {})
        notes = [f"attn {m.get('attn_implementation')}", "ckpt on" if m.get("gradient_checkpointing") else "ckpt off", f"{r['documents_per_step']:.1f} docs/step", *r.get("notes", [])]
        lines.append(f"| {mode} | {r['tokens_per_s']:,.0f} | {fmt(ratio, '.2f')} | {fmt(like, '.3f')} "
                     f"{like_for_like.get(mode, '')} | {100 * r['mfu']:.1f}% | {fmt(r.get('peak_gib'), '.1f')} | {plan} | "
                     f"{r['step_seconds_median']:.3f} | {r['first_loss']:.3f} -> {r['final_loss']:.3f} | {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"
