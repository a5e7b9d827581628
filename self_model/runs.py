"""The run directory: overwrite/resume policy, one writer at a time, and what a finished run leaves there.

output_dir gets the final model (or adapter) with its tokenizer and template, `config.yaml` (the resolved
config, secrets removed), `manifest.json` (versions, git commit, data fingerprints, metrics) and the
trainer's checkpoints and logs. Only rank 0 writes. The final files are written into `.saving/` and moved in
with `manifest.json` last, so a finished run is one whose manifest exists; a checkpoint counts only once its
`trainer_state.json` (which transformers writes last) is complete.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from self_model.config import REPO_ROOT, RunConfig
from self_model.errors import UserError

LOCK_FILE = ".lock"
STAGING_DIR = ".saving"
RUN_NUMBER = "{run}"  # in output_dir: the next free number for a new run, the highest existing one with --resume
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
HELD_LOCKS: set[Path] = set()  # the output_dir locks this process took
# what --dry-run leaves in output_dir; a later real run may replace it
DRY_RUN_FILES = {"preview.jsonl", "dry_run_config.yaml", "verl_config.yaml", "data", "initial_model", LOCK_FILE}
VERSIONED_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "deepspeed", "bitsandbytes",
                      "liger-kernel", "verl", "vllm")


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class RunDir:
    path: Path
    resume_checkpoint: str | None = None
    memory_plan: dict | None = None  # the estimate the stage printed before training (memory.MemoryPlan.summary)
    numerics: str = "stop"  # what a NaN/inf gradient does (RunConfig.numerics)

    @classmethod
    def prepare(cls, cfg: RunConfig, dry_run: bool = False, last_checkpoint=None) -> RunDir:
        """Apply the output_dir policy (an existing non-empty directory needs `resume` or `overwrite`) and take the
        directory's lock; a `{run}` in output_dir is numbered here (and training_args.output_dir set to the result).
        `last_checkpoint(path)` finds what `resume: true` continues from in runs that are not transformers' (verl)."""
        path = numbered_output_dir(cfg.output_dir, bool(cfg.resume))
        cfg.training_args["output_dir"] = str(path)
        if path.exists() and not path.is_dir():
            raise UserError(f"output_dir {path} exists and is not a directory")
        if is_main_process():
            acquire_lock(path)
            finish_interrupted_save(path)
        existing = [p.name for p in path.iterdir()] if path.is_dir() else []
        occupied = [name for name in existing if name not in DRY_RUN_FILES]
        run = cls(path, numerics=cfg.numerics)
        if isinstance(cfg.resume, str):
            if last_checkpoint is not None:
                if not Path(cfg.resume).is_dir():
                    raise UserError(f"resume: checkpoint {cfg.resume} not found")
            elif not (Path(cfg.resume) / "trainer_state.json").is_file():
                raise UserError(f"resume: {cfg.resume} is not a complete checkpoint (no trainer_state.json)")
            run.resume_checkpoint = cfg.resume
        elif cfg.resume:
            if last_checkpoint is not None:
                last = last_checkpoint(path) if path.is_dir() else None
                if last is None:
                    raise UserError(f"resume: no checkpoint in {path} to resume from")
            else:
                last = last_complete_checkpoint(path) if path.is_dir() else None
                if last is None:
                    some = " complete" if path.is_dir() and checkpoints(path) else ""
                    raise UserError(f"resume: no{some} checkpoint-* directory in {path} to resume from")
                if is_main_process():
                    drop_incomplete_checkpoints(path, last)
            run.resume_checkpoint = str(last)
        elif occupied and not cfg.overwrite and not dry_run:
            raise UserError(
                f"output_dir {path} is not empty ({', '.join(sorted(occupied)[:5])}); pass --resume to continue from its "
                "last checkpoint, --overwrite to replace it, or choose another training_args.output_dir"
            )
        if cfg.overwrite and occupied and not dry_run and is_main_process():
            for name in occupied:
                target = path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink()
        if not dry_run:
            print(f"output_dir: {path}", flush=True)
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
        start = cfg.model_name_or_path
        return save_manifest(self.path, stage, {
            "config_file": cfg.source,
            # the starting model (an adapter's base), absolute when local: merge and inference find it from here
            "model_name_or_path": str(Path(start).resolve()) if start and Path(start).exists() else start,
            **({"memory_plan": self.memory_plan} if self.memory_plan else {}),
            **extra,
        })

    @property
    def staging(self) -> Path:
        """Where the final files are written before they are moved into output_dir."""
        return self.path / STAGING_DIR

    def publish(self) -> None:
        """Move the staged final files into output_dir, manifest.json last, and give up the lock (rank 0)."""
        publish_staged(self.path)
        release_lock(self.path / LOCK_FILE)


def save_manifest(path: Path, stage: str, extra: dict[str, Any]) -> Path:
    """`manifest.json` in `path` (written whole, then renamed): the stage, when, the command, git state, versions,
    device, then `extra`."""
    manifest = {
        "stage": stage,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "git": git_state(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "device": device_description(),
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        **extra,
    }
    target = path / "manifest.json"
    staged = target.with_name(f"{target.name}.tmp")
    staged.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    staged.replace(target)
    return target


def numbered_output_dir(output_dir: str, resume: bool) -> Path:
    """`runs/{run}` -> `runs/1`, `runs/2`, ... for a new run; the highest existing number when resuming."""
    if RUN_NUMBER not in output_dir:
        return Path(output_dir)
    template = Path(output_dir)
    prefix, _, suffix = template.name.partition(RUN_NUMBER)
    if RUN_NUMBER in str(template.parent) or RUN_NUMBER in suffix:
        raise UserError(f"training_args.output_dir: {RUN_NUMBER} may appear once, in the last part of the path")
    pattern = re.compile(f"{re.escape(prefix)}(\\d+){re.escape(suffix)}")
    parent = template.parent
    numbers = [int(m[1]) for p in (parent.iterdir() if parent.is_dir() else []) if (m := pattern.fullmatch(p.name))]
    if resume:
        if not numbers:
            raise UserError(f"resume: no run directory matching {output_dir} to resume from")
        return parent / f"{prefix}{max(numbers)}{suffix}"
    return parent / f"{prefix}{max(numbers, default=0) + 1}{suffix}"


def is_complete_checkpoint(path: Path) -> bool:
    """Whether transformers finished writing this checkpoint: its trainer_state.json, written last, parses."""
    try:
        json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def checkpoints(path: Path) -> list[Path]:
    """The checkpoint-N directories of output_dir, highest step first."""
    found = [p for p in path.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name)[1]), reverse=True)


def last_complete_checkpoint(path: Path) -> Path | None:
    if not path.is_dir():
        return None
    return next((p for p in checkpoints(path) if is_complete_checkpoint(p)), None)


def drop_incomplete_checkpoints(path: Path, last: Path) -> None:
    """Remove checkpoints a killed run left half-written, so neither we nor the Trainer's rotation pick them."""
    for candidate in checkpoints(path):
        if candidate != last and not is_complete_checkpoint(candidate):
            print(f"note: removing {candidate}: written only in part (the run stopped while saving it)", flush=True)
            shutil.rmtree(candidate)


def publish_staged(path: Path) -> None:
    staging = path / STAGING_DIR
    names = sorted(p.name for p in staging.iterdir())
    for name in [n for n in names if n != "manifest.json"] + [n for n in names if n == "manifest.json"]:
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        (staging / name).replace(target)
    staging.rmdir()


def finish_interrupted_save(path: Path) -> None:
    """A final save stopped half-way: finish moving it in when its manifest was staged, else discard it."""
    staging = path / STAGING_DIR
    if not staging.is_dir():
        return
    if (staging / "manifest.json").is_file():
        print(f"note: completing the final save in {path} that a stopped run had staged", flush=True)
        publish_staged(path)
    else:
        print(f"note: discarding {staging}: a final save that did not finish", flush=True)
        shutil.rmtree(staging)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def acquire_lock(path: Path) -> None:
    """Make this process output_dir's only writer; a lock whose process is gone is taken over with a note."""
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_FILE
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = read_lock(lock)
            if other and other.get("pid") == os.getpid():
                return  # this process took it already (e.g. a second stage run in one process)
            if other and other.get("host") == holder["host"] and process_alive(int(other["pid"])):
                raise UserError(
                    f"output_dir {path} is in use by process {other['pid']} (started {other.get('started_at')}: "
                    f"{' '.join(other.get('command', []))}); wait for it to finish, stop it, or choose another "
                    "training_args.output_dir") from None
            if other and other.get("host") != holder["host"]:
                raise UserError(
                    f"output_dir {path} is locked by process {other['pid']} on host {other['host']}; if that run is "
                    f"over, delete {lock}") from None
            print(f"note: taking over the stale lock of process {other.get('pid') if other else '?'} on {path} "
                  "(it is no longer running)", flush=True)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(holder, handle)
        HELD_LOCKS.add(lock)
        return
    raise UserError(f"output_dir {path}: could not take the lock {lock}; another run is starting there")


def read_lock(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def release_lock(lock: Path) -> None:
    holder = read_lock(lock)
    if holder and holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
    HELD_LOCKS.discard(lock)


def release_locks() -> None:
    """Give up every output_dir lock this process holds (a run ended, however it ended)."""
    for lock in list(HELD_LOCKS):
        release_lock(lock)


atexit.register(release_locks)


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
