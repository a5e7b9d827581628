"""The run directory: overwrite/resume policy, and what a finished run leaves there.

output_dir gets the final model (or adapter) with its tokenizer and template, `config.yaml` (the resolved
config, secrets removed), `manifest.json` (versions, git commit, data fingerprints, metrics) and the
trainer's checkpoints and logs. Only rank 0 writes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from self_model.config import REPO_ROOT, RunConfig
from self_model.errors import UserError

# what --dry-run leaves in output_dir; a later real run may replace it
DRY_RUN_FILES = {"preview.jsonl", "dry_run_config.yaml", "verl_config.yaml", "data", "initial_model"}
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "deepspeed", "bitsandbytes",
                      "liger-kernel", "verl", "vllm")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunDir:
    path: Path
    resume_checkpoint: str | None = None
    memory_plan: dict | None = None  # the estimate the stage printed before training (memory.MemoryPlan.summary)

    @classmethod
    def prepare(cls, cfg: RunConfig, dry_run: bool = False, last_checkpoint=None) -> RunDir:
        """Apply the output_dir policy: an existing non-empty directory needs `resume` or `overwrite`.
        `last_checkpoint(path)` finds what `resume: true` continues from (default: the newest checkpoint-*)."""
        from transformers.trainer_utils import get_last_checkpoint

        find = last_checkpoint or get_last_checkpoint
        path = Path(cfg.output_dir)
        existing = [p.name for p in path.iterdir()] if path.is_dir() else []
        occupied = [name for name in existing if name not in DRY_RUN_FILES]
        if path.exists() and not path.is_dir():
            raise UserError(f"output_dir {path} exists and is not a directory")
        run = cls(path)
        if isinstance(cfg.resume, str):
            if not Path(cfg.resume).is_dir():
                raise UserError(f"resume: checkpoint {cfg.resume} not found")
            run.resume_checkpoint = cfg.resume
        elif cfg.resume:
            last = find(path) if path.is_dir() else None
            if last is None:
                raise UserError(f"resume: no {'checkpoint-* directory' if last_checkpoint is None else 'checkpoint'} "
                                f"in {path} to resume from")
            run.resume_checkpoint = last
        elif occupied and not cfg.overwrite and not dry_run:
            raise UserError(
                f"output_dir {path} is not empty ({', '.join(sorted(occupied)[:5])}); pass --resume to continue from its "
                "last checkpoint, --overwrite to replace it, or choose another training_args.output_dir"
            )
        if cfg.overwrite and occupied and not dry_run and is_main_process():
            shutil.rmtree(path)
        return run

    def write_yaml(self, name: str, data: Any) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / name
        target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
        return target

    def write_jsonl(self, name: str, rows: list[dict]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / name
        with target.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return target

    def write_manifest(self, cfg: RunConfig, stage: str, extra: dict[str, Any]) -> Path:
        manifest = {
            "stage": stage,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "config_file": cfg.source,
            "git": git_state(),
            "python": platform.python_version(),
            "versions": package_versions(),
            "device": device_description(),
            "processes": int(os.environ.get("WORLD_SIZE", "1")),
            **({"memory_plan": self.memory_plan} if self.memory_plan else {}),
            **extra,
        }
        target = self.path / "manifest.json"
        target.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        return target


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None}
    if commit.returncode != 0:
        return {"commit": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"cpu ({os.cpu_count()} cores)"
