"""report.md and PNG plots for every run, from the metrics the trainers log (`log_history.jsonl`, written at the end
of each stage from the trainer's log history, or verl's per-step metrics), and the pipeline's summary.

    uv run python -m self_model.report checkpoints/demo_sft      # write (again) the report of a finished run
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

LOG_FILE = "log_history.jsonl"
# (file, title, [(series label, log keys tried in order, y-axis label, log scale)])
PLOTS = [
    ("training.png", "Training", [
        ("train loss", ("loss",), "loss", True),
        ("learning rate", ("learning_rate",), "learning rate", False),
        ("grad norm", ("grad_norm",), "gradient norm (L2)", True),
    ]),
    ("eval.png", "Evaluation", [
        ("eval loss", ("eval_loss",), "loss", True),
        ("eval accuracy", ("eval_accuracy", "eval_rewards/accuracies"), "accuracy", False),
        ("eval reward margin", ("eval_margin", "eval_rewards/margins"), "margin", False),
    ]),
    ("rl.png", "Rollouts", [
        ("mean reward", ("reward", "critic/score/mean", "objective/scores"), "reward", False),
        ("KL to reference", ("kl", "actor/kl_loss", "objective/kl"), "KL (nats)", False),
        ("response length", ("completions/mean_length", "response_length/mean"), "tokens", False),
    ]),
    ("speed.png", "Speed and memory", [
        ("tokens/s", ("tokens_per_second",), "tokens / s", False),
        ("peak memory", ("peak_memory_gib",), "GiB", False),
    ]),
]


def run_clock():
    """A trainer callback stamping each logged row with the seconds since training began and the peak memory so far
    (GPU: allocated by torch; CPU: the process's resident set): the report plots tokens/s and memory from them."""
    from transformers import TrainerCallback

    class RunClock(TrainerCallback):
        start = time.perf_counter()  # an evaluation before training logs before on_train_begin

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.log_history:
                state.log_history[-1].update(elapsed_s=time.perf_counter() - self.start, peak_memory_gib=peak_memory_gib())

    return RunClock()


def peak_memory_gib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def write_log(run_dir: Path, rows: list[dict]) -> Path:
    """The trainer's log rows, one JSON object a line."""
    path = Path(run_dir) / LOG_FILE
    path.write_text("".join(json.dumps(row, default=float) + "\n" for row in rows), encoding="utf-8")
    return path


def read_log(run_dir: Path) -> list[dict]:
    """The logged rows of a run, in step order, with tokens/s derived where tokens and time were logged."""
    path = Path(run_dir) / LOG_FILE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.is_file() else []
    last = None
    for row in rows:
        tokens = row.get("num_tokens", row.get("num_input_tokens_seen"))
        if tokens is None or "elapsed_s" not in row:
            continue
        if last is not None and row["elapsed_s"] > last[1]:
            row["tokens_per_second"] = (tokens - last[0]) / (row["elapsed_s"] - last[1])
        last = (tokens, row["elapsed_s"])
    return rows


def series(rows: list[dict], keys: tuple[str, ...]) -> tuple[str | None, list[float], list[float]]:
    """(key found, steps, values) of the first of `keys` that was logged as a finite number."""
    for key in keys:
        points = [(row.get("step", i), row[key]) for i, row in enumerate(rows)
                  if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]
        if points:
            return key, [p[0] for p in points], [p[1] for p in points]
    return None, [], []


def plot_run(rows: list[dict], out_dir: Path, title: str) -> dict[str, dict[str, int]]:
    """One PNG per group of metrics that was logged; returns {file: {series: points}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    for name, group_title, panels in PLOTS:
        found = [(label, *series(rows, keys), ylabel, log) for label, keys, ylabel, log in panels]
        found = [f for f in found if f[1] is not None]
        if not found:
            continue
        fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.2), squeeze=False)
        for ax, (label, key, steps, values, ylabel, log) in zip(axes[0], found):
            ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3)
            ax.set_title(f"{label} ({key})", fontsize=10)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(ylabel)
            if log and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
        fig.suptitle(f"{title}: {group_title.lower()}", fontsize=11)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written[name] = {label: len(steps) for label, key, steps, *_ in found}
    return written


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(run_dir: Path, stage: str, rows: list[dict], metrics: dict, final_dir: Path | None = None) -> Path:
    """The end of every stage: its logged rows to log_history.jsonl, then report.md and the plots."""
    write_log(run_dir, rows)
    return write_run_report(run_dir, stage, metrics, final_dir)


def write_run_report(run_dir: Path, stage: str, metrics: dict, final_dir: Path | None = None) -> Path:
    """report.md and the plots of one stage run, from its log_history.jsonl; titled with `final_dir` when the run is
    written into a staging folder first."""
    run_dir = Path(run_dir)
    shown = Path(final_dir or run_dir)
    rows = read_log(run_dir)
    plots = plot_run(rows, run_dir, f"{stage} ({shown.name})")
    lines = [f"# {stage}: {shown}", "", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_number(value)} |" for key, value in metrics.items() if isinstance(value, (int, float, str))]
    lines += ["", f"## Plots (from {LOG_FILE}: {len(rows)} logged rows)", ""]
    for name, counts in plots.items():
        lines += [f"![{name}]({name})", "", ", ".join(f"{label}: {n} points" for label, n in counts.items()), ""]
    if not plots:
        lines.append("Nothing was logged over the steps (raise logging frequency: training_args.logging_steps).")
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- the pipeline's report


def summary_rows(manifest: dict) -> list[dict]:
    """One row per model an eval step scored, named by the step that produced it: {step, task/metric: value}."""
    steps = manifest["steps"]
    by_model = {str(Path(s.get("model", "")).resolve()): name for name, s in steps.items()}
    rows = []
    for name, step in steps.items():
        if step.get("stage") != "eval" or step.get("status") != "done":
            continue
        for model, tasks in (step.get("metrics") or {}).items():
            row = {"step": by_model.get(str(Path(model).resolve()), model), "eval step": name}
            for task, values in tasks.items():
                row.update({f"{task}/{metric}": value for metric, value in values.items()
                            if metric not in ("examples", "tokens")})
            rows.append(row)
    return rows


def plot_summary(rows: list[dict], out_dir: Path) -> str | None:
    """Bars of each accuracy (and perplexity) metric per model, in pipeline order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k.endswith(("accuracy", "pass@1", "perplexity"))]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    names = [row["step"] for row in rows]
    for ax, key in zip(axes[0], keys):
        values = [row.get(key, float("nan")) for row in rows]
        ax.bar(range(len(names)), values, color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(key, fontsize=10)
        ax.set_ylabel("accuracy (share correct)" if not key.endswith("perplexity") else "perplexity")
        if key.endswith("perplexity") and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Pipeline: each step's model on the eval suite", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_dir / "summary.png", dpi=100)
    plt.close(fig)
    return "summary.png"


def write_pipeline_report(out_dir: Path, manifest: dict) -> Path:
    """report.md of a pipeline: the steps (status, time, output, their own report) and the eval summary table."""
    out_dir = Path(out_dir)
    lines = [f"# Pipeline {manifest.get('pipeline')}", "", "| step | stage | status | seconds | output | report |",
             "|---|---|---|---|---|---|"]
    for name, step in manifest["steps"].items():
        output = Path(step.get("output", ""))
        report = output / "report.md"
        link = f"[report]({report.relative_to(out_dir) if report.is_relative_to(out_dir) else report})" if report.is_file() else ""
        lines.append(f"| {name} | {step.get('stage')} | {step.get('status')} | {step.get('seconds', '')} | "
                     f"{step.get('model', output)} | {link} |")
    rows = summary_rows(manifest)
    if rows:
        keys = [k for k in dict.fromkeys(k for row in rows for k in row) if k not in ("step", "eval step")]
        lines += ["", "## Each step's model on the eval suite", "", "| step | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += ["| " + " | ".join([row["step"], *(_number(row.get(k, "")) for k in keys)]) + " |" for row in rows]
        plot = plot_summary(rows, out_dir)
        if plot:
            lines += ["", f"![summary]({plot})"]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    for run_dir in argv if argv is not None else sys.argv[1:]:
        manifest = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
        print(write_run_report(Path(run_dir), manifest.get("stage", "run"), manifest.get("metrics", {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
