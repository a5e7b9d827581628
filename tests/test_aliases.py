"""The design document's config interface: one rlhf.yaml read by train_ppo.py, train_grpo.py and train_dpo.py through
the aliases of self_model/config/aliases.py; `--deepspeed FILE` on every stage; `peft.qlora: true`; `template: auto`;
and the tokenizer tool's default outputs as `tokenizer/merged_model` / `tokenizer/merged_tokenizer`."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from self_model.config import load_config, load_config_file
from self_model.config.stage import build_arg_parser
from self_model.errors import ConfigError
from self_model.fine_tuning.train_finetune import STAGE as SFT_STAGE
from self_model.pretrain.train_pretrain import STAGE as PRETRAIN_STAGE
from self_model.rlhf.train_dpo import STAGE as DPO_STAGE
from self_model.rlhf.train_grpo import STAGE as GRPO_STAGE
from self_model.rlhf.train_ppo import STAGE as PPO_STAGE
from self_model.rlhf.train_rm import STAGE as RM_STAGE
from tests.helpers import REPO, TINY, TINY_MODEL_CONFIG, TINY_TOKENIZER, tiny_sft_config, write_yaml

RLHF = REPO / "config" / "self_model_config" / "rlhf.yaml"
DS_CONFIG = REPO / "config" / "self_model_config" / "deepspeed" / "ds_config.json"
STAGES = {"train_ppo": PPO_STAGE, "train_grpo": GRPO_STAGE, "train_dpo": DPO_STAGE}
# rlhf.yaml on the tiny model and the demo data, as command-line overrides in the documented names
TINY_RUN = [
    "model_name_or_path=null", f"tokenizer_name_or_path={TINY_TOKENIZER}", f"model.init_from_config={TINY_MODEL_CONFIG}",
    "template=qwen2_chatml", f"ppo.train_file={TINY / 'data' / 'rl_prompts.jsonl'}", "ppo.eval_file=null",
    "ppo.max_prompt_length=64", "ppo.max_response_length=32", f"dpo.data.train_file={TINY / 'data' / 'pref_train.jsonl'}",
    f"dpo.data.eval_file={TINY / 'data' / 'pref_eval.jsonl'}", "dpo.data.max_length=128", "dpo.training_args.bf16=false",
]


def exit_code(main, argv) -> int:
    try:
        return main([str(a) for a in argv]) or 0
    except SystemExit as stop:
        return stop.code


def rlhf_argv(tmp_path, *extra) -> list[str]:
    return ["--config", str(RLHF), *TINY_RUN, f"reward_model_name_or_path={tmp_path}",
            f"training_args.output_dir={tmp_path / 'out'}", *extra]


@pytest.mark.parametrize("script", sorted(STAGES))
def test_rlhf_yaml_dry_runs_with_every_script(script, tmp_path, capsys, caplog):
    """Each script reads its part of the one file (the documented names reach verl's config and TRL's) and says
    which part it sets aside."""
    main = importlib.import_module(f"self_model.rlhf.{script}").main
    with caplog.at_level(logging.INFO, logger="self_model.config.aliases"):
        assert exit_code(main, [*rlhf_argv(tmp_path), "--dry-run"]) == 0, capsys.readouterr().err
    if script == "train_dpo":
        assert "`ppo` is for the ppo/grpo stage; the dpo stage sets it aside" in caplog.text
        assert "[train] rows read" in capsys.readouterr().out
        cfg, _ = load_config(DPO_STAGE, rlhf_argv(tmp_path))
        assert (cfg.sections["dpo"].beta, cfg.sections["dpo"].loss_type) == (0.1, "sigmoid")
        assert cfg.training_args["learning_rate"] == 5e-6 and cfg.data.max_length == 128
        return
    assert "`dpo` is for the dpo stage" in caplog.text
    verl = OmegaConf.load(tmp_path / "out" / "verl_config.yaml")
    actor, rollout = verl.actor_rollout_ref.actor, verl.actor_rollout_ref.rollout
    assert (actor.optim.lr, actor.ppo_mini_batch_size * rollout.n, actor.ppo_micro_batch_size_per_gpu) == (1e-6, 64, 4)
    assert (actor.use_kl_loss, actor.kl_loss_coef, rollout.n, rollout.name) == (True, 0.001, 4, "vllm")
    assert (verl.data.max_prompt_length, verl.data.max_response_length) == (64, 32)
    assert verl.reward.reward_model.model_path == str(tmp_path) and verl.reward.reward_model.enable
    assert "tensorboard" in verl.trainer.logger
    assert (verl.trainer.n_gpus_per_node, verl.trainer.nnodes) == (1, 1)


@pytest.mark.parametrize(
    "stage, extra, message",
    [
        (GRPO_STAGE, ["rl.actor.learning_rate=1e-5"], "ppo.actor_lr: the same setting as rl.actor.learning_rate "
         "(command line); write it once"),
        (DPO_STAGE, ["data.max_length=64"], "dpo.data.max_length (command line): the same setting as data.max_length "
         "(command line)"),
        (DPO_STAGE, ["ppo.actor_learnig_rate=1"], "ppo.actor_learnig_rate (command line): unknown key"),
        (GRPO_STAGE, ["ppo.rollout_n=1"], "rl.rollout.n (command line, as ppo.rollout_n): grpo compares several answers"),
        (PPO_STAGE, ["ppo.rollout_backend=sglang"], "rl.rollout.engine (command line, as ppo.rollout_backend)"),
        (PPO_STAGE, ["ppo.logger=[console,mlflow]"], "trace (command line, as ppo.logger): unknown backend 'mlflow'"),
        (SFT_STAGE, [], "ppo (command line): unknown key"),  # only the stages that share rlhf.yaml set the others' parts aside
    ],
)
def test_alias_mistakes_name_the_key_as_written(stage, extra, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(stage, rlhf_argv(tmp_path, *extra))
    assert message in str(err.value)


def test_deepspeed_flag_on_every_stage(tmp_path, capsys):
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path))
    for stage in (PRETRAIN_STAGE, SFT_STAGE, RM_STAGE, DPO_STAGE, GRPO_STAGE, PPO_STAGE):
        args = ["--config", str(path), "--deepspeed", "config/self_model_config/deepspeed/ds_config.json", "--dry-run"]
        parsed = build_arg_parser(stage).parse_intermixed_args(args)
        assert parsed.deepspeed.endswith("ds_config.json") and parsed.dry_run
    cfg, _ = load_config(SFT_STAGE, ["--config", str(path), "--deepspeed", "config/self_model_config/deepspeed/ds_config.json"])
    assert Path(cfg.training_args["deepspeed"]).resolve() == DS_CONFIG.resolve()
    assert json.loads(DS_CONFIG.read_text())["zero_optimization"]["stage"] == 2
    main = importlib.import_module("self_model.pretrain.train_pretrain").main
    assert exit_code(main, ["--config", path, "--deepspeed", tmp_path / "missing.json"]) == 2
    assert "training_args.deepspeed (command line): file not found" in capsys.readouterr().err


@pytest.mark.parametrize("stage, data", [(PRETRAIN_STAGE, "corpus.txt"), (SFT_STAGE, "sft_train.jsonl")])
def test_peft_qlora_true_is_qlora(stage, data, tmp_path):
    config = {"model_name_or_path": str(tmp_path), "tokenizer_name_or_path": str(TINY_TOKENIZER),
              "data": {"train_file": str(TINY / "data" / data)}, "peft": {"qlora": True}}
    cfg = load_config_file(stage, write_yaml(tmp_path / "c.yaml", config))
    assert (cfg.peft.enabled, cfg.peft.method) == (True, "qlora")
    config["peft"] = {"qlora": True, "method": "lora"}
    with pytest.raises(ConfigError, match=r"peft.qlora: the same setting as peft.method; write it once"):
        load_config_file(stage, write_yaml(tmp_path / "c.yaml", config))


def test_template_auto_names_the_family_it_chose(tmp_path, capsys, caplog):
    main = importlib.import_module("self_model.fine_tuning.train_finetune").main
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path, template="auto"))
    with caplog.at_level(logging.INFO, logger="self_model.template.chat"):
        assert exit_code(main, ["--config", path, "--dry-run"]) == 0
    assert "template: auto chose 'qwen2_chatml' (its chat_template writes '<|im_start|>')" in caplog.text


def test_merged_paths_of_the_tokenizer_tool(tmp_path, monkeypatch, capsys):
    """extend_vocab.py writes tokenizer/merged_model and tokenizer/merged_tokenizer by default; a stage takes them as
    paths, and names the tool when they are missing (instead of asking the hub for `tokenizer/merged_model`)."""
    from tests.test_tokenizer_tools import tiny_model
    from tokenizer import extend_vocab

    monkeypatch.chdir(tmp_path)
    config = tiny_sft_config(tmp_path, model_name_or_path="tokenizer/merged_model",
                             tokenizer_name_or_path="tokenizer/merged_tokenizer")
    config.pop("model")
    path = write_yaml(tmp_path / "sft.yaml", config)
    main = importlib.import_module("self_model.fine_tuning.train_finetune").main
    assert exit_code(main, ["--config", path, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model_name_or_path: 'tokenizer/merged_model' is neither an existing path nor a hub id (tokenizer/" \
           "extend_vocab.py writes it" in err
    base_model = tiny_model(tmp_path / "base_model", 1856, True)
    assert exit_code(extend_vocab.main, ["--base_tokenizer", TINY_TOKENIZER, "--base_model", base_model,
                                         "--domain_corpus", REPO / "README.md", "--new_tokens", 20]) == 0
    assert sorted(p.name for p in (tmp_path / "tokenizer").iterdir()) == ["fertility.json", "merged_model", "merged_tokenizer"]
    assert exit_code(main, ["--config", path, "--dry-run"]) == 0, capsys.readouterr().err


def test_template_of_another_family_stops_before_training(tmp_path, capsys):
    main = importlib.import_module("self_model.fine_tuning.train_finetune").main
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path, template="llama3"))
    assert exit_code(main, ["--config", path, "--dry-run"]) == 2
    assert "template: 'llama3' writes <|begin_of_text|>, <|start_header_id|>" in capsys.readouterr().err
