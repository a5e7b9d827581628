"""PPO/GRPO: reward functions, RL prompt conversion, verl config translation (validated by verl on CPU), TRL backend."""

from __future__ import annotations

import json

import pytest
import yaml

from self_model.config import load_config_file
from self_model.data.rl import RLDataArgs, row_to_prompt, verl_row
from self_model.data.sources import BadRowLog, read_source
from self_model.errors import ConfigError
from self_model.rlhf import rewards, rl_stage
from self_model.rlhf.train_grpo import STAGE as GRPO_STAGE
from self_model.rlhf.train_ppo import STAGE as PPO_STAGE
from tests.helpers import (
    REPO,
    TINY,
    TINY_MODEL_CONFIG,
    TINY_TOKENIZER,
    run_script,
    shared_path,
    write_jsonl,
    write_yaml,
)


def train_grpo(cfg, dry_run=False):
    return rl_stage.train(cfg, GRPO_STAGE, dry_run)


def train_ppo(cfg, dry_run=False):
    return rl_stage.train(cfg, PPO_STAGE, dry_run)

PROMPTS = TINY / "data" / "rl_prompts.jsonl"
GRPO_SCRIPT = "self_model/rlhf/train_grpo.py"
REPO_CONFIG = REPO / "config" / "examples" / "grpo_tiny.yaml"


def config(tmp_path, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER), "template": "qwen2_chatml",
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(PROMPTS)},
        "rl": {"backend": "verl", "total_steps": 4, "prompts_per_step": 16,
               "rollout": {"engine": "vllm", "n": 4, "max_prompt_length": 64, "max_response_length": 32},
               "actor": {"ppo_mini_batch_size": 8, "ppo_micro_batch_size_per_gpu": 4}},
        "trace": "none", "training_args": {"output_dir": str(tmp_path / "out")},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            for key, inner in value.items():
                nested = isinstance(inner, dict) and isinstance(values[name].get(key), dict)
                values[name][key] = {**values[name][key], **inner} if nested else inner
        else:
            values[name] = value
    return values


def load(stage, tmp_path, **sections):
    return load_config_file(stage, write_yaml(tmp_path / "rl.yaml", config(tmp_path, **sections)))


# ---------------------------------------------------------------- reward functions


def test_math_accuracy_on_real_gsm8k_answers():
    rows = [json.loads(line) for line in shared_path("data", "gsm8k", "test.jsonl").read_text().splitlines()[:200]]
    data = RLDataArgs()
    for row in rows:
        truth = row_to_prompt(row, data)["ground_truth"]
        assert rewards.math_accuracy(row["answer"], truth) == 1.0, row["answer"][-60:]
        assert rewards.answer_format(row["answer"]) == 1.0
        reasoning = row["answer"].rsplit("####", 1)[0]  # the worked solution without its final answer line
        assert rewards.math_accuracy(reasoning, truth) == 0.0, reasoning[-60:]
    wrong = rows[0]["answer"].rsplit("####", 1)[0] + "#### 99999"
    assert rewards.math_accuracy(wrong, row_to_prompt(rows[0], data)["ground_truth"]) == 0.0


@pytest.mark.parametrize(
    "completion, truth, strict, lenient",
    [
        ("So she makes 9 * 2 = $18 a day.\n#### 18", "18", 1.0, 1.0),
        ("The total is \\boxed{1,234}.", "1234", 1.0, 1.0),
        ("#### $1,234.00", "1234", 1.0, 1.0),
        ("#### -3.50", "-3.5", 1.0, 1.0),
        ("#### \u22123", "-3", 1.0, 1.0),  # Unicode minus
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0, 1.0),
        ("So it is #### 3/4", "0.75", 1.0, 1.0),
        ("The answer is 18.", "18", 1.0, 1.0),
        ("The final answer is: 18 dollars.\nDone.", "18", 1.0, 1.0),
        ("#### 18\nTo check: \\boxed{18}", "18", 1.0, 1.0),  # several marks, one value
        ("#### 17", "18", 0.0, 0.0),
        ("no number at all", "18", 0.0, 0.0),
        ("Is it 17 or 18?", "18", 0.0, 1.0),  # a bare last number
        ("First 3 apples, then 4 more: 7", "7", 0.0, 1.0),  # reasoning without a final answer line
        ("#### 17\n#### 18", "18", 0.0, 1.0),  # two different answers
        ("The answer is 17 or 18.", "18", 0.0, 1.0),  # two candidates in one answer
        ("#### 18 and then some text with 5", "18", 0.0, 0.0),  # lenient: the last number after a mark
    ],
)
def test_math_accuracy_credits_one_marked_answer_unless_lenient(completion, truth, strict, lenient):
    assert rewards.math_accuracy(completion, truth) == strict
    assert rewards.resolve("math_accuracy", lenient=True)(completion, truth, "", {}) == lenient


def test_math_accuracy_gives_truncated_answers_no_credit():
    assert rewards.math_accuracy("#### 18", "18", "", {"truncated": True}) == 0.0
    assert rewards.math_accuracy("#### 18", "18", "", {"truncated": False}) == 1.0
    assert rewards.math_accuracy("#### 18", "18", "", {"truncated": True}, lenient=True) == 1.0
    (trl_fn,) = rewards.trl_reward_funcs([rewards.math_accuracy], eos_token_id=2, max_length=4)
    completions = ["#### 18", "#### 18", "#### 18"]
    ids = [[5, 6, 7, 8], [5, 6, 7, 2], [5, 2]]  # cut at max_length; ends with EOS at max_length; finished early
    assert trl_fn(prompts=[None] * 3, completions=completions, ground_truth=["18"] * 3, data_source=["a"] * 3,
                  completion_ids=ids) == [0.0, 1.0, 1.0]


def test_verl_reward_manager_marks_truncated_answers():
    import numpy as np
    import torch
    from verl import DataProto

    from self_model.rlhf.verl_reward import mark_truncated

    def sample(response, mask):
        return DataProto.from_dict(
            tensors={"responses": torch.tensor([response]), "attention_mask": torch.tensor([[1, 1, *mask]])},
            non_tensors={"extra_info": np.array([{"index": 0}], dtype=object)})

    cases = [([5, 6, 7], [1, 1, 1], True), ([5, 6, 2], [1, 1, 1], False), ([5, 2, 0], [1, 1, 0], False)]
    for response, mask, truncated in cases:
        data = sample(response, mask)
        mark_truncated(data, eos_token_id=2)
        assert data[0].non_tensor_batch["extra_info"]["truncated"] is truncated, response


def test_format_and_length_rewards():
    assert rewards.answer_format("so #### 4") == 1.0 and rewards.answer_format("\\boxed{4}") == 1.0
    assert rewards.answer_format("the answer is 4") == 0.0 and rewards.answer_format("#### 4 #### 5") == 0.0
    assert rewards.length_penalty("x" * 900) == 0.0
    assert rewards.length_penalty("x" * 1500) == pytest.approx(-0.5) and rewards.length_penalty("x" * 5000) == -1.0


def test_reward_plugins_and_their_failures(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text("def exact(completion, ground_truth, data_source, extra_info):\n"
                      "    return float(completion.strip() == ground_truth)\n"
                      "def broken(completion, ground_truth, data_source, extra_info):\n"
                      "    raise KeyError('oops')\n"
                      "def text(completion, ground_truth, data_source, extra_info):\n"
                      "    return 'high'\n")
    assert rewards.resolve(f"{plugin}:exact")("4", "4", "x", {}) == 1.0
    with pytest.raises(rewards.RewardError, match=r"broken raised KeyError.*completion '7'.*ground_truth '4'"):
        rewards.call_reward(rewards.resolve(f"{plugin}:broken"), "7", "4", "toy", {})
    with pytest.raises(rewards.RewardError, match="returned 'high' \\(not a finite number\\)"):
        rewards.call_reward(rewards.resolve(f"{plugin}:text"), "7", "4", "toy", {})
    with pytest.raises(ConfigError, match="unknown reward 'math_acuracy'.*math_accuracy"):
        rewards.resolve("math_acuracy")
    with pytest.raises(ConfigError, match="has no function 'missing'"):
        rewards.resolve(f"{plugin}:missing")
    combined = rewards.combined([rewards.math_accuracy, rewards.answer_format], [1.0, 0.5], "#### 4", "4", "x", {})
    assert combined == {"math_accuracy": 1.0, "answer_format": 1.0, "score": 1.5}


def test_verl_reward_hook_matches_trl_adapter():
    from self_model.rlhf.verl_reward import compute_score

    out = compute_score("openai/gsm8k", "... #### 72", "72", {"index": 0}, functions=["math_accuracy", "answer_format"],
                        weights=[1.0, 0.1])
    assert out["score"] == pytest.approx(1.1)
    assert compute_score("x", "I think 72", "72", {}, functions=["math_accuracy"], weights=[1.0])["score"] == 0.0
    assert compute_score("x", "I think 72", "72", {}, functions=["math_accuracy"], weights=[1.0], lenient=True)["score"] == 1.0
    (trl_fn,) = rewards.trl_reward_funcs([rewards.math_accuracy], eos_token_id=2, max_length=8)
    completions = [[{"role": "assistant", "content": "#### 72"}], [{"role": "assistant", "content": "#### 7"}]]
    assert trl_fn(prompts=[None, None], completions=completions, ground_truth=["72", "72"], data_source=["a", "a"],
                  completion_ids=[[1, 2], [1, 2]]) == [1.0, 0.0]


# ---------------------------------------------------------------- data


def test_gsm8k_rows_become_verl_parquet(tmp_path):
    import pandas as pd

    rows = read_source(f"{shared_path('data', 'gsm8k', 'train.jsonl')}#64", BadRowLog("fail"))
    data = RLDataArgs(prompt_suffix=" Answer after ####.")
    records = [row_to_prompt(row.data, data) for row in rows]
    frame = pd.DataFrame([verl_row(r, i, "train") for i, r in enumerate(records)])
    frame.to_parquet(tmp_path / "train.parquet")
    back = pd.read_parquet(tmp_path / "train.parquet")
    assert list(back.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    first = back.iloc[0]
    assert first["data_source"] == "openai/gsm8k" and first["ability"] == "math"
    assert first["prompt"][0]["role"] == "user" and first["prompt"][0]["content"].endswith(" Answer after ####.")
    assert first["reward_model"]["ground_truth"] == rows[0].data["answer"].split("####")[-1].strip().replace(",", "")


def test_generated_prompts_convert_and_bad_rows_are_named(tmp_path):
    good = row_to_prompt({"prompt": [{"role": "user", "content": "2+2?"}], "ground_truth": 4, "data_source": "toy"}, RLDataArgs())
    assert good == {"prompt": [{"role": "user", "content": "2+2?"}], "ground_truth": "4", "data_source": "toy"}
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "ground_truth": "1", "data_source": "t"}, {"prompt": "b"}])
    cfg = load(GRPO_STAGE, tmp_path, data={"train_file": str(path)})
    result = run_script(GRPO_SCRIPT, "--config", str(tmp_path / "rl.yaml"), "--dry-run")
    assert result.returncode == 2 and f"{path}:2" in result.stderr and "ground_truth" in result.stderr, result.stderr[-800:]
    assert cfg.data.train_file == str(path)


# ---------------------------------------------------------------- verl config translation


@pytest.mark.parametrize(
    "algorithm, cluster, extra",
    [
        ("grpo", {"nnodes": 1, "n_gpus_per_node": 1}, {}),
        ("grpo", {"nnodes": 1, "n_gpus_per_node": 8}, {"prompts_per_step": 32}),
        ("grpo", {"nnodes": 2, "n_gpus_per_node": 8, "ray_address": "auto"}, {"prompts_per_step": 64}),
        ("ppo", {"nnodes": 1, "n_gpus_per_node": 1}, {"rollout": {"n": 1}}),
        ("ppo", {"nnodes": 1, "n_gpus_per_node": 8}, {"prompts_per_step": 64, "rollout": {"n": 1}}),
        ("ppo", {"nnodes": 2, "n_gpus_per_node": 8}, {"prompts_per_step": 128, "rollout": {"n": 1}}),
    ],
)
def test_verl_config_is_built_and_validated_by_verl(tmp_path, algorithm, cluster, extra):
    stage, train = (GRPO_STAGE, train_grpo) if algorithm == "grpo" else (PPO_STAGE, train_ppo)
    actor = {"ppo_mini_batch_size": 8 * cluster["nnodes"], "ppo_micro_batch_size_per_gpu": 1}
    cfg = load(stage, tmp_path, rl={"cluster": cluster, "actor": actor, "critic": {"ppo_micro_batch_size_per_gpu": 1}, **extra},
               peft={"enabled": True, "lora_r": 8, "target_modules": "all-linear"})
    assert train(cfg, dry_run=True) is None
    out = tmp_path / "out"
    verl = yaml.safe_load((out / "verl_config.yaml").read_text())
    assert verl["algorithm"]["adv_estimator"] == ("grpo" if algorithm == "grpo" else "gae")
    assert verl["trainer"]["n_gpus_per_node"] == cluster["n_gpus_per_node"] and verl["trainer"]["nnodes"] == cluster["nnodes"]
    assert verl["actor_rollout_ref"]["model"]["lora_rank"] == 8
    assert verl["actor_rollout_ref"]["rollout"]["name"] == "vllm"
    assert verl["reward"]["custom_reward_function"]["reward_kwargs"]["functions"] == ["math_accuracy"]
    assert "<|im_start|>" in verl["actor_rollout_ref"]["model"]["custom_chat_template"]
    assert (out / "data" / "train.parquet").is_file() and not (out / "initial_model" / "model.safetensors").exists()
    if algorithm == "ppo":
        assert verl["critic"]["enable"] is True and verl["critic"]["model"]["path"] == str(out / "initial_model")
    if "ray_address" in cluster:
        assert verl["ray_kwargs"]["ray_init"]["address"] == "auto"


def learning_rates(scheduler, steps: int) -> list[float]:
    """The rate a scheduler gives at each of `steps` optimizer steps."""
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule, warmup, steps", [("cosine", 0.25, 8), ("cosine", 0.1, 15), ("constant", 0.1, 15)])
def test_both_backends_get_the_same_learning_rate_schedule(tmp_path, schedule, warmup, steps):
    import torch
    from transformers import TrainingArguments, get_scheduler
    from verl.workers.config.optimizer import FSDPOptimizerConfig, build_optimizer
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    actor = {"lr_scheduler": schedule, "warmup_ratio": warmup, "weight_decay": 0.05, "learning_rate": 1.0}
    cfg = load(PPO_STAGE, tmp_path, rl={"actor": actor, "rollout": {"n": 1}, "total_steps": steps})
    assert train_ppo(cfg, dry_run=True) is None
    verl = yaml.safe_load((tmp_path / "out" / "verl_config.yaml").read_text())
    assert verl["critic"]["optim"] == {**verl["critic"]["optim"], **{k: verl["actor_rollout_ref"]["actor"]["optim"][k] for k in (
        "lr_scheduler_type", "lr_warmup_steps", "weight_decay")}}
    # verl's own optimizer and scheduler from the composed config: one scheduler step per rollout step
    optim = {k: v for k, v in verl["actor_rollout_ref"]["actor"]["optim"].items() if k != "_target_"}
    optim_config = FSDPOptimizerConfig(**{**optim, "total_training_steps": verl["trainer"]["total_training_steps"]})
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], optim_config)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05
    engine = type("Engine", (), {"optimizer_config": optim_config, "rank": 1})()
    verl_rates = learning_rates(FSDPEngine._build_lr_scheduler(engine, optimizer), steps)

    # TRL's GRPO steps its scheduler at every optimizer update (2 a rollout step here), TRL's PPO once a rollout step
    trl_ppo = {"rollout": {"engine": "hf"}, "reward": {"functions": [], "reward_model": str(tmp_path)}}
    for stage, rl in (GRPO_STAGE, {}), (PPO_STAGE, trl_ppo):
        owned = stage.owned_values(load(stage, tmp_path, overwrite=True, rl={
            "backend": "trl", "actor": actor, "total_steps": steps, **rl}))
        assert owned["weight_decay"] == 0.05
        updates = owned["max_steps"] // steps if stage is GRPO_STAGE else 1
        args = TrainingArguments(tmp_path / "args", warmup_steps=owned["warmup_steps"])
        total = steps * updates
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        trl_rates = learning_rates(get_scheduler(owned["lr_scheduler_type"], optimizer, args.get_warmup_steps(total), total), total)
        assert trl_rates[::updates] == pytest.approx(verl_rates), (stage.name, trl_rates, verl_rates)
    assert verl_rates[0] == 0.0 and max(verl_rates) == 1.0  # the warm-up starts from 0 on both


@pytest.mark.parametrize(
    "stage, sections, expected",
    [
        (GRPO_STAGE, {"rl": {"rollout": {"n": 1}}}, "rl.rollout.n: grpo compares several answers"),
        (GRPO_STAGE, {"rl": {"prompts_per_step": 12}}, "prompts_per_step (12) must be a multiple of ppo_mini_batch_size (8)"),
        (GRPO_STAGE, {"rl": {"prompts_per_step": 10, "rollout": {"n": 3}, "actor": {"ppo_mini_batch_size": 5},
                      "cluster": {"n_gpus_per_node": 8}}},
         "must divide evenly over the 8 GPUs"),
        (PPO_STAGE, {"rl": {"backend": "trl"}}, "TRL's PPO scores answers with a reward model"),
        (GRPO_STAGE, {"rl": {"critic": {"model_name_or_path": "x"}}}, "GRPO uses no critic"),
        (GRPO_STAGE, {"rl": {"reward": {"functions": [], "reward_model": None}}}, "nothing scores the answers"),
        (GRPO_STAGE, {"training_args": {"output_dir": "x", "num_generations": 4}}, "use `rl.rollout.n` instead"),
        (GRPO_STAGE, {"training_args": {"output_dir": "x", "logging_steps": 4}}, "used by rl.backend: trl only"),
        (GRPO_STAGE, {"rl": {"rollout": {"engin": "hf"}}}, "did you mean 'engine'?"),
        (GRPO_STAGE, {"rl": {"backend": "trl"}, "training_args": {"output_dir": "x", "lr_scheduler_type": "linear"}},
         "use `rl.actor.lr_scheduler` instead"),
        (GRPO_STAGE, {"rl": {"actor": {"warmup_ratio": 1.0}}}, "0 <= warmup_ratio < 1, got 1.0"),
        (GRPO_STAGE, {"rl": {"actor": {"lr_scheduler": "linear"}}}, "rl.actor.lr_scheduler"),
        (GRPO_STAGE, {"rl": {"backend": "trl"}, "training_args": {"output_dir": "x", "warmup_ratio": 0.1}},
         "use `rl.actor.warmup_ratio` instead"),
        (PPO_STAGE, {"rl": {"backend": "trl", "rollout": {"engine": "hf"}, "critic": {"learning_rate": 1e-4},
                            "reward": {"functions": [], "reward_model": "x"}}},
         "rl.critic.learning_rate: TRL's PPO trains policy and value with one optimizer"),
        (GRPO_STAGE, {"rl": {"backend": "trl", "cluster": {"n_gpus_per_node": 8}}}, "launch the TRL backend with torchrun"),
        (GRPO_STAGE, {"rl": {"backend": "trl", "rollout": {"enforce_eager": True}}}, "rl.rollout.enforce_eager: TRL's"),
        (GRPO_STAGE, {"rl": {"rollout": {"tensor_parallel_size": 0}}}, "rl.rollout.tensor_parallel_size: must be 1 or more"),
        (PPO_STAGE, {"rl": {"backend": "trl", "rollout": {"tensor_parallel_size": 2}, "reward": {"reward_model": "x"}}},
         "rl.rollout.tensor_parallel_size: TRL's PPO generates with transformers"),
        (PPO_STAGE, {"rl": {"backend": "trl", "reward": {"reward_model": "x"}}},  # config() writes engine: vllm
         "rl.rollout.engine: TRL's PPO generates with transformers"),
    ],
)
def test_bad_rl_configs(tmp_path, stage, sections, expected):
    with pytest.raises(ConfigError) as err:
        load(stage, tmp_path, **sections)
    assert expected in str(err.value)


def test_verl_passthrough_keys_and_verl_rejections(tmp_path):
    cfg = load(GRPO_STAGE, tmp_path, rl={"verl": {"trainer.val_befor_train": True}})
    with pytest.raises(ConfigError, match="rl.verl.trainer.val_befor_train: verl's config has no such key"):
        train_grpo(cfg, dry_run=True)
    cfg = load(GRPO_STAGE, tmp_path, overwrite=True, rl={"verl": {"actor_rollout_ref.actor.loss_agg_mode": "per-nothing",
                                                                   "+trainer.my_note": "kept"}})
    with pytest.raises(ConfigError, match="verl rejected the generated config: .*loss_agg_mode"):
        train_grpo(cfg, dry_run=True)


def test_grpo_dry_run_cli_writes_the_verl_config(tmp_path):
    write_yaml(tmp_path / "rl.yaml", config(tmp_path))
    result = run_script(GRPO_SCRIPT, "--config", str(tmp_path / "rl.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "config validated by verl and written to" in result.stdout
    assert (tmp_path / "out" / "verl_config.yaml").is_file() and (tmp_path / "out" / "preview.jsonl").is_file()


# ---------------------------------------------------------------- TRL backend


def test_trl_grpo_raises_the_mean_reward(tmp_path):
    trainer = train_grpo(load_config_file(GRPO_STAGE, REPO_CONFIG, [f"training_args.output_dir={tmp_path / 'out'}"]))
    rewards_logged = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards_logged) == 40
    first, last = sum(rewards_logged[:8]) / 8, sum(rewards_logged[-8:]) / 8
    assert last > first + 0.03, rewards_logged
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metrics"]["reward_last"] == rewards_logged[-1]


def test_trl_grpo_rollout_keys_reach_the_colocated_vllm(tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec  # as on a machine with the gpu extra
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: name == "vllm" or find_spec(name, *args))
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun --nproc_per_node 2: one vLLM over both
    rl = {"backend": "trl", "rollout": {"gpu_memory_utilization": 0.3, "tensor_parallel_size": 2}}
    owned = GRPO_STAGE.owned_values(load(GRPO_STAGE, tmp_path, rl=rl))
    assert owned["use_vllm"] and owned["vllm_mode"] == "colocate"
    assert (owned["vllm_gpu_memory_utilization"], owned["vllm_tensor_parallel_size"]) == (0.3, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")  # TRL would raise this after loading the model
    with pytest.raises(ConfigError, match="tensor_parallel_size: 2 must divide the number of processes"):
        load(GRPO_STAGE, tmp_path, rl=rl)


@pytest.mark.parametrize("stage, engine, expected", [
    (GRPO_STAGE, "vllm", "vLLM is not installed"), (PPO_STAGE, None, "TRL's PPO generates with transformers"),
    (GRPO_STAGE, "hf", None)])
def test_trl_backend_says_when_it_does_not_use_vllm(tmp_path, capsys, monkeypatch, stage, engine, expected):
    import importlib.util

    find_spec = importlib.util.find_spec  # as on a machine without the gpu extra
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "vllm" else find_spec(name, *args))
    reward = {"functions": [], "reward_model": str(tmp_path)} if stage is PPO_STAGE else {}
    values = config(tmp_path, rl={"backend": "trl", "rollout": {"engine": engine}, "reward": reward})
    if engine is None:  # left to its default (vllm)
        del values["rl"]["rollout"]["engine"]
    cfg = load_config_file(stage, write_yaml(tmp_path / "rl.yaml", values))
    assert rl_stage.train(cfg, stage, dry_run=True) is None
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: rl.rollout.engine")]
    assert [expected in line for line in notes] == ([True] if expected else [])


def tiny_reward_model(path):
    """A random reward model beside the tiny tokenizer saved as TokenizersBackend, as train_rm.py writes it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config_ = AutoConfig.from_pretrained(TINY_MODEL_CONFIG, num_labels=1, pad_token_id=0)
    AutoModelForSequenceClassification.from_config(config_).save_pretrained(path)
    AutoTokenizer.from_pretrained(TINY_TOKENIZER).save_pretrained(path)
    return path


def test_trl_ppo_runs_with_a_reward_model(tmp_path):
    reward_dir = tiny_reward_model(tmp_path / "rm")
    cfg = load(PPO_STAGE, tmp_path, rl={"backend": "trl", "total_steps": 2, "prompts_per_step": 4,
                                        "rollout": {"engine": "hf", "n": 1, "max_response_length": 8},
                                        "actor": {"ppo_mini_batch_size": 2, "ppo_micro_batch_size_per_gpu": 4},
                                        "reward": {"functions": [], "reward_model": str(reward_dir)}},
               training_args={"output_dir": str(tmp_path / "out"), "logging_steps": 1, "save_strategy": "no",
                              "num_sample_generations": 0})
    trainer = train_ppo(cfg)
    scores = [entry["objective/scores"] for entry in trainer.state.log_history if "objective/scores" in entry]
    assert len(scores) == 2 and (tmp_path / "out" / "model.safetensors").is_file()

