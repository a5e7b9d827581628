"""Tracking adapter: our `trace` names -> the trainers' `report_to`, with settings from config/trace_config/.

Settings files hold non-secret options only; API keys come from the environment (WANDB_API_KEY,
SWANLAB_API_KEY) and a key written in a settings file is refused. Trainers log on rank 0 only.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from self_model.config import REPO_ROOT, is_secret_key
from self_model.errors import ConfigError
from self_model.runs import is_main_process

TRACE_CONFIG_DIR = REPO_ROOT / "config" / "trace_config"
# settings key -> environment variable read by the transformers integration
ENV_KEYS = {
    "wandb": {"project": "WANDB_PROJECT", "entity": "WANDB_ENTITY", "mode": "WANDB_MODE", "dir": "WANDB_DIR",
              "log_model": "WANDB_LOG_MODEL", "run_group": "WANDB_RUN_GROUP"},
    # swanlab >= 0.10 parses its SWANLAB_* variables as structured settings: its settings go to swanlab.init instead
    "swanlab": {"project": None, "workspace": None, "mode": None, "log_dir": None},
    "tensorboard": {"log_dir": None},
}
MODES = {"wandb": ("online", "offline", "disabled"), "swanlab": ("online", "local", "offline", "disabled")}


def load_settings(backend: str, settings_dir: Path = TRACE_CONFIG_DIR) -> dict:
    """The backend's settings file (missing file: defaults), checked for unknown keys and secrets."""
    path = settings_dir / f"{backend}.yaml"
    if not path.is_file():
        return {}
    settings = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    problems = []
    for key, value in settings.items():
        if is_secret_key(key):
            problems.append(f"{key}: secrets must come from the environment, not from a file")
        elif key not in ENV_KEYS[backend]:
            problems.append(f"{key}: unknown setting (valid: {', '.join(ENV_KEYS[backend])})")
        elif key == "mode" and value not in MODES[backend]:
            problems.append(f"mode: {value!r} is not one of {', '.join(MODES[backend])}")
    if problems:
        raise ConfigError(problems, str(path))
    return settings


def setup_tracking(backends: list[str], output_dir: str, run_name: str | None = None) -> list[str]:
    """Export the backends' settings to the environment (values already set there win) and return report_to."""
    backends = [b for b in backends if b != "none"]
    for backend in backends:
        settings = load_settings(backend)
        for key, value in settings.items():
            env = ENV_KEYS[backend][key]
            if env and value is not None:
                os.environ.setdefault(env, str(value))
        if backend == "wandb":
            os.environ.setdefault("WANDB_DIR", output_dir)
            if os.environ.get("WANDB_MODE", "online") == "online" and not os.environ.get("WANDB_API_KEY"):
                raise ConfigError(["trace: wandb is online but WANDB_API_KEY is not set; export it, or set mode: offline "
                                   "in config/trace_config/wandb.yaml"], "environment")
        if backend == "swanlab" and settings.get("mode", "online") == "online" and not os.environ.get("SWANLAB_API_KEY"):
            raise ConfigError(["trace: swanlab is online but SWANLAB_API_KEY is not set; export it, or set "
                               "mode: offline (or local) in config/trace_config/swanlab.yaml"], "environment")
    if run_name and "wandb" in backends:
        os.environ.setdefault("WANDB_NAME", run_name)
    return backends or ["none"]


def start_runs(report_to: list[str], output_dir: str, run_name: str | None) -> None:
    """Open the tracker runs the trainer callbacks expect to exist (rank 0 only)."""
    if "swanlab" not in report_to or not is_main_process():
        return
    import swanlab

    # transformers 5.10's SwanLabCallback asks swanlab.get_run(), which raises (swanlab >= 0.10) until a run exists.
    try:
        swanlab.get_run()
    except RuntimeError:
        settings = load_settings("swanlab")
        settings.setdefault("log_dir", str(Path(output_dir) / "swanlog"))
        swanlab.init(**settings, name=run_name)


def finish_runs(report_to: list[str]) -> None:
    if "swanlab" in report_to and is_main_process():
        import swanlab

        swanlab.finish()


def tensorboard_dir(output_dir: str) -> str | None:
    settings = load_settings("tensorboard")
    return settings.get("log_dir") or str(Path(output_dir) / "runs")
