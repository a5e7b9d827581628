"""Summarise bench/verl_grpo.sh: step times and their split, tokens/GPU/s, ours vs raw verl vs the TRL backend."""

import json
import statistics
import sys
from pathlib import Path

SPLIT = ("timing_s/gen", "timing_s/old_log_prob", "timing_s/ref", "timing_s/update_actor", "timing_s/update_weights")


def verl_steps(path: Path) -> list[dict]:
    return [{"step": r["step"], **r["data"]} for r in map(json.loads, path.read_text().splitlines()) if r.get("data")]


def middle(steps: list[dict]) -> list[dict]:
    """Steps without the first (warm-up) and the last (checkpoint save in ours)."""
    return [s for s in steps if 1 < s["step"] < max(x["step"] for x in steps)]


def main(out: Path) -> None:
    rows = {}
    for name in ("ours", "raw"):
        path = out / f"grpo_{name}_metrics.jsonl"
        if path.is_file():
            steps = middle(verl_steps(path))
            rows[name] = {key: statistics.median(s[key] for s in steps if key in s)
                          for key in ("timing_s/step", "perf/throughput", *SPLIT) if any(key in s for s in steps)}
            rows[name]["steps"] = len(steps)
            rows[name]["reward"] = [round(s.get("critic/score/mean", float("nan")), 4) for s in verl_steps(path)]
    trl = out / "grpo_trl_manifest.json"
    if trl.is_file():
        metrics = json.loads(trl.read_text())["metrics"]
        rows["trl"] = {"timing_s/step": metrics["train_runtime"] / 6, "reward": [metrics.get("reward_first"), metrics.get("reward_last")]}
    print(json.dumps(rows, indent=1))
    if "ours" in rows and "raw" in rows:
        print(f"step time ours/raw: {rows['ours']['timing_s/step'] / rows['raw']['timing_s/step']:.3f}")
    if "ours" in rows and "trl" in rows:
        print(f"step time trl/ours(verl): {rows['trl']['timing_s/step'] / rows['ours']['timing_s/step']:.2f}")
    (out / "grpo_summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
