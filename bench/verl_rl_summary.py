"""One line per verl step of a run directory (bench/gpu_rl.sh): reward, critic and policy losses, clipping,
DAPO's filtered groups, step time and throughput, from the run's verl_metrics*.jsonl (every attempt)."""

import sys
from pathlib import Path

from self_model.rlhf.verl_backend import read_metrics

KEYS = {"reward": "critic/score/mean", "vf_loss": "critic/vf_loss", "vpred": "critic/vpred_mean",
        "pg_loss": "actor/pg_loss", "clipfrac": "actor/pg_clipfrac", "filtered": "train/filter_groups/evicted_samples",
        "resp_len": "response_length/mean", "step_s": "timing_s/step", "tok/gpu/s": "perf/throughput"}


def main(run: Path) -> None:
    for step in read_metrics(run):
        found = {name: step[key] for name, key in KEYS.items() if key in step}
        print(f"  step {step['step']}: " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
