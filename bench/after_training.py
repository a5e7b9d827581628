"""After-training tools on one GPU, on the Qwen2.5-0.5B shape (tiny demo tokenizer and data): merge, transformers vs
vLLM greedy text and tokens/s, `vllm serve` once, quantized exports in vLLM (perplexity vs bf16, size on disk).
Each step runs in its own process (vLLM holds the GPU until its process ends) and writes $OUT/<step>.json:

    python3 bench/after_training.py train|merge|generate|serve|quantize|summary      (bench/gpu_after_training.sh)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, TOKENIZER, environment, save_random_checkpoint

WORK = Path(os.environ.get("AFTER_WORK", "/tmp/after_bench"))
OUT = Path(os.environ.get("OUT", WORK / "out"))
DATA = REPO_ROOT / "examples" / "tiny" / "data"
SHAPE = os.environ.get("AFTER_SHAPE", "0.5b")  # `smoke` checks the CPU-side steps (train, merge) in seconds
SFT_STEPS = int(os.environ.get("AFTER_SFT_STEPS", "300"))
SCHEMES = ("w4a16", "w8a8", "fp8")
PROMPTS = 256  # throughput: prompts x up to 256 new tokens, on the untrained base (it rarely stops early)


def record(step: str, result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{step}.json").write_text(json.dumps({"environment": environment(), **result}, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


def sft(config: dict, name: str) -> Path:
    import yaml

    from self_model.config import load_config_file
    from self_model.fine_tuning.train_finetune import STAGE, train

    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    train(load_config_file(STAGE, path))
    return WORK / name


def step_train() -> None:
    """A random 0.5B-shape checkpoint, a full SFT of it (so greedy replies are text), and a LoRA SFT on top."""
    WORK.mkdir(parents=True, exist_ok=True)
    random_base = save_random_checkpoint(SHAPE, WORK / "random_base")
    for item in TOKENIZER.iterdir():  # a model directory the tools open by itself
        shutil.copy(item, random_base / item.name)
    common = {"tokenizer_name_or_path": str(TOKENIZER), "template": "qwen2_chatml", "trace": "none",
              "data": {"train_file": str(DATA / "sft_train.jsonl"), "eval_file": str(DATA / "sft_eval.jsonl"),
                       "max_length": 256, "packing": False}}
    started = time.perf_counter()
    sft({**common, "model_name_or_path": str(random_base),
         "training_args": {"output_dir": str(WORK / "sft"), "max_steps": SFT_STEPS, "learning_rate": 3e-4,
                           "per_device_train_batch_size": 16, "save_strategy": "no", "logging_steps": 50}}, "sft")
    sft({**common, "model_name_or_path": str(WORK / "sft"), "peft": {"enabled": True, "lora_r": 16, "lora_alpha": 32},
         "training_args": {"output_dir": str(WORK / "lora"), "max_steps": max(1, SFT_STEPS // 3), "learning_rate": 1e-3,
                           "per_device_train_batch_size": 16, "save_strategy": "no", "logging_steps": 50}}, "lora")
    metrics = json.loads((WORK / "lora" / "manifest.json").read_text())["metrics"]
    record("train", {"seconds": time.perf_counter() - started, "lora_metrics": metrics})


def step_merge() -> None:
    """Merge time and the merged model's logits against base + adapter (bf16 and float32 merges)."""
    import resource

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from self_model.merge_lora import main as merge_main
    from self_model.outputs import OutputDir

    timings = {}
    for dtype in ("bf16", "fp32"):
        started = time.perf_counter()
        assert merge_main(["--adapter", str(WORK / "lora"), "--output_dir", str(WORK / f"merged_{dtype}"),
                           "--dtype", dtype, "--overwrite"]) == 0
        timings[dtype] = time.perf_counter() - started
    tokenizer = OutputDir.open(str(WORK / "merged_bf16")).load_tokenizer()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = tokenizer(["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt").to(device)
    with torch.no_grad():
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(WORK / "sft", dtype=torch.float32),
                                              WORK / "lora").to(device).eval()(**batch).logits
        diffs = {dtype: float((AutoModelForCausalLM.from_pretrained(WORK / f"merged_{dtype}", dtype=torch.float32).to(device)
                               .eval()(**batch).logits - reference).abs().max()) for dtype in timings}
    record("merge", {"seconds": timings, "max_abs_logit_diff_vs_base_plus_adapter_fp32": diffs,
                     "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})


def prompts_from(path: Path, count: int) -> list[list[dict]]:
    from self_model.infer import read_prompts

    rows = read_prompts(str(path))
    return [rows[i % len(rows)]["prompt"] for i in range(count)]


def engine_worker(kind: str, model: str, backend: str, prompts: str, max_new_tokens: str, out: str) -> None:
    """One engine in this process: greedy completions and tokens/s for the prompts file."""
    from self_model.generation import Sampling, open_engine
    from self_model.outputs import OutputDir

    engine = open_engine(OutputDir.open(model), backend, template="qwen2_chatml", dtype="bf16", batch_size=64)
    rows = json.loads(Path(prompts).read_text())
    ids = [engine.prompt_ids(messages) for messages in rows]
    engine.generate(ids[:4], Sampling(max_new_tokens=8))  # warm-up
    started = time.perf_counter()
    completions = engine.generate(ids, Sampling(max_new_tokens=int(max_new_tokens)))
    seconds = time.perf_counter() - started
    tokens = sum(c[0].completion_tokens for c in completions)
    Path(out).write_text(json.dumps({"kind": kind, "texts": [c[0].text for c in completions], "seconds": seconds,
                                     "completion_tokens": tokens, "tokens_per_s": tokens / seconds}))


def run_engine(kind: str, model: Path, backend: str, prompts: list, max_new_tokens: int) -> dict:
    spec, out = WORK / f"{kind}_prompts.json", WORK / f"{kind}_result.json"
    spec.write_text(json.dumps(prompts))
    subprocess.run([sys.executable, __file__, "engine", kind, str(model), backend, str(spec), str(max_new_tokens),
                    str(out)], check=True, timeout=900)
    return json.loads(out.read_text())


def step_generate() -> None:
    """Greedy text: transformers vs vLLM on the merged model, vLLM serving the adapter directly; tokens/s of both
    engines on PROMPTS prompts x 256 new tokens of the untrained 0.5B base."""
    few = prompts_from(DATA / "sft_eval.jsonl", 8)
    merged = WORK / "merged_bf16"
    hf = run_engine("hf_greedy", merged, "transformers", few, 64)
    vllm = run_engine("vllm_greedy", merged, "vllm", few, 64)
    vllm_lora = run_engine("vllm_lora_greedy", WORK / "lora", "vllm", few, 64)
    many = prompts_from(DATA / "sft_train.jsonl", PROMPTS)
    speed = {backend: run_engine(f"{backend}_speed", WORK / "random_base", backend, many, 256)
             for backend in ("transformers", "vllm")}
    record("generate", {
        "greedy_prompts": len(few),
        "transformers_equals_vllm": [a == b for a, b in zip(hf["texts"], vllm["texts"])],
        "vllm_lora_equals_vllm_merged": [a == b for a, b in zip(vllm_lora["texts"], vllm["texts"])],
        "texts": {"transformers": hf["texts"], "vllm": vllm["texts"], "vllm_lora": vllm_lora["texts"]},
        "throughput": {b: {k: v for k, v in r.items() if k != "texts"} for b, r in speed.items()},
        "vllm_over_transformers": speed["vllm"]["tokens_per_s"] / speed["transformers"]["tokens_per_s"],
    })


def step_serve() -> None:
    """`self-model-serve --backend vllm` on the adapter directory once: one chat completion through openai."""
    import urllib.request

    import openai

    port = 8765
    command = [sys.executable, "-m", "self_model.serve", "--model", str(WORK / "lora"), "--backend", "vllm",
               "--port", str(port), "--", "--max-model-len", "1024", "--gpu-memory-utilization", "0.5",
               "--enforce-eager"]  # one reply: CUDA-graph capture would cost more than it saves
    log = (OUT / "vllm_serve.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    started, result = time.perf_counter(), {"command": command}
    try:
        while time.perf_counter() - started < 600:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(2)
        result["startup_seconds"] = time.perf_counter() - started
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        reply = client.chat.completions.create(model="lora", max_tokens=64, temperature=0,
                                               messages=[{"role": "user", "content": "What is 3 + 4?"}])
        result.update(reply=reply.choices[0].message.content, finish_reason=reply.choices[0].finish_reason,
                      usage=reply.usage.model_dump())
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()
    record("serve", result)


def step_quantize() -> None:
    """Each scheme's export (calibrated on the run's eval file), its size, and its chat perplexity in vLLM vs bf16.
    `quantize [SCHEME ...]` runs some schemes (results add up in quantize.json across calls)."""
    from self_model.quantize import main as quantize_main

    path = OUT / "quantize.json"
    results = json.loads(path.read_text())["results"] if path.is_file() else {}
    results.setdefault("merged_bf16", {"perplexity": model_perplexity(WORK / "merged_bf16")})
    for scheme in sys.argv[2:] or SCHEMES:
        started = time.perf_counter()
        code = quantize_main(["--model", str(WORK / "merged_bf16"), "--scheme", scheme, "--output_dir",
                              str(WORK / f"q_{scheme}"), "--iters", "50", "--samples", "64", "--seqlen", "256",
                              "--overwrite"])
        seconds = time.perf_counter() - started
        manifest = json.loads((WORK / f"q_{scheme}" / "manifest.json").read_text())
        ppl = model_perplexity(WORK / f"q_{scheme}")
        results[scheme] = {"exit": code, "seconds": seconds, **manifest["size_on_disk"], "perplexity": ppl,
                           "perplexity_ratio_vs_bf16": ppl / results["merged_bf16"]["perplexity"]}
        record("quantize", {"results": results})  # after each scheme: a call that runs out of time keeps the rest


def model_perplexity(model: Path) -> float:
    """Chat perplexity on the eval file in vLLM, in its own process (vLLM holds the GPU until its process ends)."""
    out = WORK / f"ppl_{model.name}.json"
    subprocess.run([sys.executable, __file__, "ppl", str(model), str(out)], check=True, timeout=900)
    return json.loads(out.read_text())["perplexity"]


def ppl_worker(model: str, out: str) -> None:
    from self_model.evaluate import PerplexityTask, perplexity
    from self_model.generation import open_engine
    from self_model.outputs import OutputDir

    engine = open_engine(OutputDir.open(model), "vllm", max_model_len=1024, enforce_eager=True)  # no decoding
    Path(out).write_text(json.dumps(perplexity(engine, PerplexityTask(file=str(DATA / "sft_eval.jsonl")), 0)))


def step_summary() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    found = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    lines = ["| measure | value |", "|---|---|"]
    if "merge" in found:
        lines += [f"| merge {SHAPE} {k} (s) | {v:.1f} |" for k, v in found["merge"]["seconds"].items()]
        lines += [f"| merged {k} vs base+adapter, max logit diff | {v:.2e} |"
                  for k, v in found["merge"]["max_abs_logit_diff_vs_base_plus_adapter_fp32"].items()]
    if "generate" in found:
        g = found["generate"]
        lines.append(f"| greedy text equal, transformers vs vLLM | {sum(g['transformers_equals_vllm'])}/{g['greedy_prompts']} |")
        lines.append(f"| greedy text equal, vLLM LoRA vs vLLM merged | {sum(g['vllm_lora_equals_vllm_merged'])}/{g['greedy_prompts']} |")
        for backend, r in g["throughput"].items():
            lines.append(f"| {backend} tokens/s ({PROMPTS} prompts x <=256) | {r['tokens_per_s']:.0f} |")
        lines.append(f"| vLLM / transformers | {g['vllm_over_transformers']:.1f}x |")
    if "serve" in found:
        lines.append(f"| vllm serve (adapter) start-up s, reply | {found['serve'].get('startup_seconds', 0):.0f}, "
                     f"{found['serve'].get('reply', '')!r} |")
    if "quantize" in found:
        for scheme, r in found["quantize"]["results"].items():
            if "perplexity_ratio_vs_bf16" in r:
                lines.append(f"| {scheme}: MiB, perplexity ratio vs bf16 | {r['bytes'] / 2**20:.0f}, "
                             f"{r['perplexity_ratio_vs_bf16']:.3f} |")
    print("\n".join(lines))
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


STEPS = {"train": step_train, "merge": step_merge, "generate": step_generate, "serve": step_serve,
         "quantize": step_quantize, "summary": step_summary}

if __name__ == "__main__":
    if sys.argv[1] == "engine":
        engine_worker(*sys.argv[2:])
    elif sys.argv[1] == "ppl":
        ppl_worker(*sys.argv[2:])
    else:
        STEPS[sys.argv[1]]()
