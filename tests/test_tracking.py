"""Tracking adapter: trace names become report_to; offline backends write locally; secrets stay in the env."""

from __future__ import annotations

import pytest

from self_model.config import load_config_file
from self_model.errors import ConfigError
from self_model.fine_tuning.train_finetune import STAGE, train
from self_model.tracking import load_settings, setup_tracking
from tests.helpers import tiny_sft_config, write_yaml

TRACKER_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "SWANLAB_MODE", "SWANLAB_API_KEY",
               "SWANLAB_LOG_DIR", "SWANLAB_PROJECT")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)


def test_offline_backends_log_locally(tmp_path):
    cfg = load_config_file(STAGE, write_yaml(tmp_path / "c.yaml", tiny_sft_config(
        tmp_path, trace=["tensorboard", "swanlab"], training_args={"max_steps": 2, "logging_steps": 1})))
    trainer = train(cfg)
    assert set(trainer.args.report_to) == {"tensorboard", "swanlab"}
    out = tmp_path / "out"
    assert list((out / "runs").rglob("events.out.tfevents.*")), "tensorboard wrote no events"
    assert any((out / "swanlog").iterdir()), "swanlab (offline) wrote nothing"


def test_settings_file_may_not_hold_secrets(tmp_path):
    (tmp_path / "wandb.yaml").write_text("project: p\napi_key: abc\n")
    with pytest.raises(ConfigError, match="secrets must come from the environment"):
        load_settings("wandb", tmp_path)
    (tmp_path / "swanlab.yaml").write_text("projct: p\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings("swanlab", tmp_path)


def test_online_without_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="WANDB_API_KEY is not set"):
        setup_tracking(["wandb"], str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "from-env")
    assert setup_tracking(["wandb"], str(tmp_path)) == ["wandb"]


def test_none_means_no_tracker(tmp_path):
    assert setup_tracking(["none"], str(tmp_path)) == ["none"]
