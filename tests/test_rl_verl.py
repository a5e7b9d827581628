"""rl.algorithm on verl's composed config and on TRL's GRPOConfig, the critic loader hook, verl resume, and a
reward model on the TRL backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from self_model.data.built import TRAIN
from self_model.errors import ConfigError, UserError
from self_model.rlhf import rl_stage, verl_backend, verl_workers
from self_model.rlhf.train_grpo import STAGE as GRPO_STAGE
from self_model.rlhf.train_ppo import STAGE as PPO_STAGE
from self_model.stage import build_training_args
from tests.helpers import TINY_MODEL_CONFIG
from tests.test_rl import load, tiny_reward_model


def composed(cfg, algorithm):
    """verl's own config (its packaged defaults + our values), validated by verl, as plain data."""
    from omegaconf import OmegaConf

    model = Path(cfg.output_dir).parent / "model"  # verl reads the critic's config.json while validating
    model.mkdir(exist_ok=True)
    shutil.copy(TINY_MODEL_CONFIG, model / "config.json")
    values = verl_backend.verl_values(cfg, algorithm, str(model), {TRAIN: "train.parquet"}, None)
    conf = verl_backend.compose(values, {})
    verl_backend.validate(conf)
    return OmegaConf.to_container(conf, resolve=True)


# (estimator, normalise by std, loss aggregation, policy loss, clip low, clip high, dynamic sampling)
VERL_EXPECTED = {
    "grpo": ("grpo", True, "seq-mean-token-mean", "vanilla", 0.2, 0.2, False),
    "dr_grpo": ("grpo", False, "seq-mean-token-sum-norm", "vanilla", 0.2, 0.2, False),
    "rloo": ("rloo", True, "token-mean", "vanilla", 0.2, 0.2, False),
    "reinforce_plus_plus": ("reinforce_plus_plus", True, "token-mean", "vanilla", 0.2, 0.2, False),
    "dapo": ("grpo", True, "token-mean", "vanilla", 0.2, 0.28, True),
    "gspo": ("grpo", True, "seq-mean-token-mean", "gspo", 3e-4, 4e-4, False),
}


@pytest.mark.parametrize("algorithm", list(VERL_EXPECTED))
def test_critic_free_algorithms_on_verls_composed_config(tmp_path, algorithm):
    verl = composed(load(GRPO_STAGE, tmp_path, rl={"algorithm": algorithm}), algorithm)
    actor = verl["actor_rollout_ref"]["actor"]
    got = (verl["algorithm"]["adv_estimator"], verl["algorithm"]["norm_adv_by_std_in_grpo"], actor["loss_agg_mode"],
           actor["policy_loss"]["loss_mode"], actor["clip_ratio_low"], actor["clip_ratio_high"],
           verl["algorithm"]["filter_groups"]["enable"])
    assert got == VERL_EXPECTED[algorithm]
    assert verl["critic"]["enable"] is not True
    manager = verl["reward"]["reward_manager"]
    assert manager["source"] == "importlib" and manager["module"]["path"] == str(verl_backend.REWARD_HOOK)
    if algorithm == "dapo":  # overlong penalty over the last fifth of max_response_length (32 tokens)
        assert manager["name"] == "OverlongRewardManager"
        assert verl["reward"]["reward_kwargs"] == {"max_resp_len": 32, "overlong_buffer_cfg": {
            "enable": True, "len": 6, "penalty_factor": 1.0, "log": True}}
    else:
        assert manager["name"] == "RewardManager" and "reward_kwargs" not in verl["reward"]


def test_ppo_on_verl_with_the_critic_loader_hook(tmp_path):
    verl = composed(load(PPO_STAGE, tmp_path, rl={"rollout": {"n": 1}, "critic": {"export": True}}), "ppo")
    assert verl["algorithm"]["adv_estimator"] == "gae" and verl["critic"]["enable"] is True
    assert verl["ray_kwargs"]["ray_init"]["runtime_env"]["worker_process_setup_hook"] == verl_workers.SETUP_HOOK
    assert verl["critic"]["model"]["override_config"]["attn_implementation"] == "sdpa"
    grpo = composed(load(GRPO_STAGE, tmp_path, overwrite=True), "grpo")  # the hook also loads tokenizers as saved
    assert grpo["ray_kwargs"]["ray_init"]["runtime_env"]["worker_process_setup_hook"] == verl_workers.SETUP_HOOK


def test_explicit_clip_keys_win_over_the_papers(tmp_path):
    gspo = composed(load(GRPO_STAGE, tmp_path, rl={"algorithm": "gspo", "actor": {"clip_ratio": 0.1}}), "gspo")
    assert (gspo["actor_rollout_ref"]["actor"]["clip_ratio_low"], gspo["actor_rollout_ref"]["actor"]["clip_ratio_high"]) == (0.1, 0.1)
    dapo = composed(load(GRPO_STAGE, tmp_path, rl={"algorithm": "dapo", "actor": {"clip_ratio_high": 0.3},
                                                   "reward": {"overlong_buffer": 0}}), "dapo")
    assert dapo["actor_rollout_ref"]["actor"]["clip_ratio_high"] == 0.3
    assert dapo["reward"]["reward_manager"]["name"] == "RewardManager"


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        ("grpo", {"loss_type": "grpo", "scale_rewards": "group", "importance_sampling_level": "token", "epsilon": 0.2,
                  "epsilon_high": 0.2, "mask_truncated_completions": False}),
        ("dr_grpo", {"loss_type": "dr_grpo", "scale_rewards": "none", "epsilon_high": 0.2}),
        ("dapo", {"loss_type": "dapo", "epsilon": 0.2, "epsilon_high": 0.28, "mask_truncated_completions": True}),
        ("gspo", {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4}),
    ],
)
def test_algorithms_on_trls_grpo_config(tmp_path, algorithm, expected):
    cfg = load(GRPO_STAGE, tmp_path, rl={"backend": "trl", "algorithm": algorithm, "rollout": {"engine": "hf"}})
    args = build_training_args(cfg, GRPO_STAGE, owned=True)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    "stage, sections, expected",
    [
        (GRPO_STAGE, {"rl": {"backend": "trl", "algorithm": "rloo"}}, "rloo (RLOO, Ahmadian et al. 2024) runs on rl.backend: verl"),
        (GRPO_STAGE, {"rl": {"backend": "trl", "algorithm": "reinforce_plus_plus"}}, "runs on rl.backend: verl"),
        (GRPO_STAGE, {"rl": {"algorithm": "ppo"}}, "ppo trains a critic: run it with self_model/rlhf/train_ppo.py"),
        (PPO_STAGE, {"rl": {"algorithm": "dapo"}}, "dapo uses no critic: run it with self_model/rlhf/train_grpo.py"),
        (GRPO_STAGE, {"rl": {"algorithm": "dapo", "reward": {"functions": [], "reward_model": "rm"}}}, "dynamic sampling"),
        (GRPO_STAGE, {"rl": {"backend": "trl", "reward": {"overlong_buffer": 8}}}, "the overlong penalty is verl's"),
        (GRPO_STAGE, {"rl": {"actor": {"clip_ratio_high": 0.1}}}, "0.1 is below the lower clip range 0.2"),
        (GRPO_STAGE, {"rl": {"reward": {"functions": ["answer_format"], "lenient": True}}}, "applies to math_accuracy only"),
        (GRPO_STAGE, {"rl": {"backend": "trl"}, "training_args": {"output_dir": "x", "loss_type": "bnpo"}},
         "use `rl.algorithm` instead"),
        (GRPO_STAGE, {"rl": {"verl": {"trainer.resume_mode": "auto"}}}, "resume with --resume"),
        (GRPO_STAGE, {"rl": {"backend": "trl", "critic": {"export": True}}}, "exporting the critic is verl's"),
        (PPO_STAGE, {"resume": True, "rl": {"backend": "trl", "reward": {"functions": [], "reward_model": "rm"}}},
         "TRL's experimental PPOTrainer cannot resume"),
    ],
)
def test_algorithm_and_backend_refusals(tmp_path, stage, sections, expected):
    with pytest.raises(ConfigError) as err:
        load(stage, tmp_path, **sections)
    assert expected in str(err.value)


# ---------------------------------------------------------------- the critic loader


def test_critic_hook_loads_the_value_model_with_the_configured_attention(tmp_path, monkeypatch):
    import verl.utils.model as verl_model
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL_CONFIG)).save_pretrained(tmp_path / "policy")
    config = AutoConfig.from_pretrained(tmp_path / "policy", attn_implementation="sdpa", num_labels=1)
    with pytest.raises((ImportError, ValueError), match="(?i)flash"):  # verl's own loader insists on flash-attn 2
        verl_model.load_valuehead_model(str(tmp_path / "policy"), "float32", config, False)
    monkeypatch.setattr(verl_model, "load_valuehead_model", verl_model.load_valuehead_model)
    verl_workers.load_critic_with_configured_attention()
    verl_workers.load_critic_with_configured_attention()  # a second call (another hook run) keeps one wrapper
    critic = verl_model.load_valuehead_model(str(tmp_path / "policy"), "float32", config, False)
    assert type(critic).__name__ == "Qwen2ForTokenClassification" and critic.config._attn_implementation == "sdpa"
    assert critic.score.out_features == 1


def test_worker_hook_makes_verl_tokenize_as_training_did(tmp_path, monkeypatch):
    from transformers import AutoTokenizer
    from verl.utils.tokenizer import hf_tokenizer

    from self_model.modeling import load_saved_tokenizer
    from tests.helpers import random_model_dir

    model = random_model_dir(tmp_path / "policy")  # a Qwen2 config.json beside a tokenizer saved as TokenizersBackend
    text = "Natalia sold 48/2 = 24 clips in May, 1 + 3 = 4."
    trained = load_saved_tokenizer(str(model))(text)["input_ids"]
    assert hf_tokenizer(str(model))(text)["input_ids"] != trained  # transformers swaps in Qwen2Tokenizer
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", AutoTokenizer.__dict__["from_pretrained"])
    verl_workers.honour_saved_tokenizer_class()
    verl_workers.honour_saved_tokenizer_class()  # a second hook run keeps one wrapper
    assert hf_tokenizer(str(model))(text)["input_ids"] == trained
    assert type(AutoTokenizer.from_pretrained(str(TINY_MODEL_CONFIG.parent / "tokenizer"))).__name__ == "TokenizersBackend"


# ---------------------------------------------------------------- resume


def fake_verl_checkpoint(out, step: int):
    (out / "verl_checkpoints" / f"global_step_{step}" / "actor").mkdir(parents=True)
    (out / "verl_checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(step))


def test_verl_resume_continues_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="resume: no checkpoint in"):
        rl_stage.train(load(GRPO_STAGE, tmp_path, resume=True), GRPO_STAGE, dry_run=True)
    fake_verl_checkpoint(out, 2)
    (out / "verl_metrics.jsonl").write_text("".join(json.dumps({"step": s, "data": {"critic/score/mean": s / 10}}) + "\n"
                                                    for s in (1, 2, 3)))  # step 3 was cut off by the kill
    rl_stage.train(load(GRPO_STAGE, tmp_path, resume=True), GRPO_STAGE, dry_run=True)
    verl = yaml.safe_load((out / "verl_config.yaml").read_text())
    assert verl["trainer"]["resume_mode"] == "auto" and verl["trainer"]["default_local_dir"] == str(out / "verl_checkpoints")
    resumed_log = verl["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"]["VERL_FILE_LOGGER_PATH"]
    assert resumed_log == str(out / "verl_metrics.resumed-1.jsonl")  # verl truncates its log: each attempt has its own
    (out / "verl_metrics.resumed-1.jsonl").write_text(json.dumps({"step": 3, "data": {"critic/score/mean": 0.9}}) + "\n")
    assert [(s["step"], s["critic/score/mean"]) for s in verl_backend.read_metrics(out)] == [(1, 0.1), (2, 0.2), (3, 0.9)]
    step = str(out / "verl_checkpoints" / "global_step_2")
    rl_stage.train(load(GRPO_STAGE, tmp_path, resume=step), GRPO_STAGE, dry_run=True)
    verl = yaml.safe_load((out / "verl_config.yaml").read_text())
    assert verl["trainer"]["resume_mode"] == "resume_path" and verl["trainer"]["resume_from_path"] == step
    rl_stage.train(load(GRPO_STAGE, tmp_path, training_args={"output_dir": str(tmp_path / "fresh")}), GRPO_STAGE, True)
    assert yaml.safe_load((tmp_path / "fresh" / "verl_config.yaml").read_text())["trainer"]["resume_mode"] == "disable"


def tiny_trl_grpo(tmp_path, resume=False, **rl):
    return load(GRPO_STAGE, tmp_path, resume=resume,
                rl={"backend": "trl", "prompts_per_step": 4, "rollout": {"engine": "hf", "n": 2, "max_response_length": 8},
                    "actor": {"ppo_mini_batch_size": 4, "ppo_micro_batch_size_per_gpu": 8}, **rl},
                training_args={"output_dir": str(tmp_path / "out"), "logging_steps": 1, "save_strategy": "steps",
                               "save_steps": 1, "seed": 0})


def test_trl_grpo_resumes_and_scores_with_a_reward_model(tmp_path):
    from transformers import AutoTokenizer

    from self_model.modeling import load_saved_tokenizer

    reward_dir = tiny_reward_model(tmp_path / "rm")
    reward = {"functions": [], "reward_model": str(reward_dir)}
    first = rl_stage.train(tiny_trl_grpo(tmp_path, total_steps=1, reward=reward), GRPO_STAGE)
    assert first.state.global_step == 1 and (tmp_path / "out" / "checkpoint-1").is_dir()
    scores = list(first._logs["rewards"]["rm"])  # the reward column is the reward model's (named after its folder)
    assert len(scores) == 8 and len(set(scores)) > 1
    text = "Natalia sold 48/2 = 24 clips in May."  # the RM is fed the token ids it was trained on
    trained_ids = load_saved_tokenizer(str(reward_dir))(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(reward_dir)(text)["input_ids"] != trained_ids  # what TRL would load itself
    assert first.reward_processing_classes[0](text)["input_ids"] == trained_ids
    resumed = rl_stage.train(tiny_trl_grpo(tmp_path, resume=True, total_steps=2, reward=reward), GRPO_STAGE)
    assert resumed.state.global_step == 2  # continued from checkpoint-1, not restarted
    assert [e["step"] for e in resumed.state.log_history if "reward" in e] == [1, 2]
