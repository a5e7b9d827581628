"""Throughput and peak memory of process_data's full pipeline on generated Chinese/English documents (CPU).

    uv run python bench/data_process_bench.py --docs 100000 --out bench/results

Generates the documents (planted exact and ~5%-edited copies, some junk), then runs the pipeline in a fresh
process for each mode: full pipeline with 2 worker processes, the same with 1, and with 2 but no near-dedup.
Reports documents per second (wall clock of the run, worker start-up included), peak memory (the main
process's own high-water mark, VmHWM; the largest worker and all processes together, sampled every 0.2 s) and
the precision/recall of the planted duplicates. Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from data_process.synthetic import planted_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]

MODES = {
    "full, 2 processes": {"processes": 2},
    "full, 1 process (baseline)": {"processes": 1},
    "no near-dedup, 2 processes": {"processes": 2, "dedup": {"near": False}},
}
FULL = {
    "kind": "pretrain",
    "validation_ratio": 0.01,
    "report_examples": 1_000_000,  # every removed row, to score the planted duplicates
    "redact_pii": ["email", "phone", "id_card"],
    "normalize": {"strip_html": True},
    "filters": {"min_chars": 50, "max_chars": 200_000, "min_letter_ratio": 0.5, "max_symbol_ratio": 0.3,
                "max_repeated_ngram_ratio": 0.4, "scripts": ["latin", "han"], "min_script_share": 0.8},
    "dedup": {"exact": True, "near": True},
}


def run_one(spec: dict) -> dict:
    """Run the pipeline in this process; return timing, memory and the removed row numbers."""
    from data_process.pipeline import run
    from data_process.settings import load_process_settings

    settings = load_process_settings(None, [], spec)
    start = time.perf_counter()
    report, _ = run(settings)
    seconds = time.perf_counter() - start
    removed = {step: [int(e["where"].rsplit(":", 1)[1]) - 1 for e in examples] for step, examples in report.examples.items()}
    return {
        "seconds": seconds,
        "rows_in": report.rows_read,
        "rows_out": sum(report.written.values()),
        "removed_counts": dict(report.removed),
        "removed": removed,
        "peak_main_mib": high_water_mark_mib(),
    }


def high_water_mark_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it does not carry the parent's over exec)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_measured(command: list[str], output: Path) -> tuple[str, dict]:
    """Run `command`, sampling the resident memory of it and its worker processes; returns (stdout, peaks)."""
    with output.open("w") as stdout:  # a file, not a pipe: nobody reads a pipe while we sample
        child = subprocess.Popen(command, stdout=stdout, text=True)
        process, peaks = psutil.Process(child.pid), {"peak_worker_mib": 0.0, "peak_all_processes_mib": 0.0}
        while child.poll() is None:
            try:
                workers = [p.memory_info().rss / 2**20 for p in process.children(recursive=True)]
                total = process.memory_info().rss / 2**20 + sum(workers)
            except psutil.Error:  # a process ended between listing and reading it
                continue
            peaks["peak_worker_mib"] = max([peaks["peak_worker_mib"], *workers])
            peaks["peak_all_processes_mib"] = max(peaks["peak_all_processes_mib"], total)
            time.sleep(0.2)
    if child.returncode:
        raise SystemExit(f"{' '.join(command[:3])} ... failed with exit code {child.returncode}")
    return output.read_text(), peaks


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def score(docs, removed: dict) -> dict:
    """Precision and recall of the planted copies among the rows each dedup step removed."""
    scores = {}
    for copy in ("exact", "near"):
        planted = {i for i, d in enumerate(docs) if d.copy == copy}
        found = set(removed.get(f"{copy}_dup", []))
        if found:
            scores[copy] = {"planted": len(planted), "removed": len(found), "precision": len(planted & found) / len(found),
                            "recall": len(planted & found) / len(planted)}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.environ.get("OUT", "bench/results"))
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # internal: a JSON spec, run in a fresh process
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        docs = planted_corpus(args.docs, seed=args.seed, exact_share=0.05, near_share=0.05, junk_share=0.02)
        source = Path(scratch) / "docs.jsonl"
        source.write_text("".join(json.dumps({"text": d.text}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
        size = source.stat().st_size / 2**20
        print(f"generated {len(docs)} documents ({size:.0f} MiB) in {time.perf_counter() - started:.0f} s")
        results = {}
        for name, extra in MODES.items():
            spec = merge({**FULL, "input": [str(source)], "output_dir": str(Path(scratch) / name.replace(" ", "_"))}, extra)
            load_before = os.getloadavg()[0]
            stdout, peaks = run_measured([sys.executable, __file__, "--run-one", json.dumps(spec)], Path(scratch) / "result.json")
            result = {**json.loads(stdout.splitlines()[-1]), **peaks}
            result["docs_per_second"] = result["rows_in"] / result["seconds"]
            result["dedup"] = score(docs, result.pop("removed"))
            result["load_average"] = [load_before, os.getloadavg()[0]]
            results[name] = result
            print(f"{name}: {result['docs_per_second']:.0f} docs/s, main {result['peak_main_mib']:.0f} MiB, "
                  f"all processes {result['peak_all_processes_mib']:.0f} MiB, removed {result['removed_counts']}, "
                  f"{result['dedup']}, load average {result['load_average']}")
    environment = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                   "mean_chars": sum(len(d.text) for d in docs) / len(docs), "docs": len(docs)}
    (out / "data_process_bench.json").write_text(json.dumps({"environment": environment, "results": results}, indent=2))
    rows = ["| mode | docs/s | vs baseline | peak RSS main | largest worker | all processes | load avg (before, after) |",
            "|---|---|---|---|---|---|---|"]
    baseline = results["full, 1 process (baseline)"]["docs_per_second"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['docs_per_second']:,.0f} | {r['docs_per_second'] / baseline:.2f} | "
                    f"{r['peak_main_mib']:.0f} MiB | {r['peak_worker_mib']:.0f} MiB | {r['peak_all_processes_mib']:.0f} MiB | "
                    f"{r['load_average'][0]:.1f}, {r['load_average'][1]:.1f} |")
    (out / "data_process_bench.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
