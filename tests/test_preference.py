"""Reward model and the DPO family on tiny models: preference rows, learning on separable pairs, references, configs.

The separable pairs are capital-city questions answered with the right capital (chosen) or another country's
(rejected): a closed set of facts that a tiny random-init model learns in a minute on CPU. Held-out pairs are new
draws (other wrong cities, other phrasings) of the same facts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from data_process import make_sample_data
from self_model.config import load_config_file
from self_model.data.preference import PreferenceDataArgs, row_to_preference
from self_model.data.sources import BadRow
from self_model.errors import ConfigError
from self_model.rlhf import train_dpo, train_rm
from tests.helpers import TINY_MODEL_CONFIG, TINY_TOKENIZER, run_script, shared_path, write_jsonl, write_yaml

DPO_SCRIPT = "self_model/rlhf/train_dpo.py"
ROW = PreferenceDataArgs()


def language_pairs_rows(rng: random.Random, n: int) -> list[dict]:
    """A sum asked in English or Chinese; chosen answers in the question's language, rejected in the other. A reward
    model must read the prompt to rank them, and held-out pairs hold sums it never saw."""
    rows = []
    for _ in range(n):
        op = rng.choice(list(make_sample_data.OPS))
        zh_op, fn = make_sample_data.OPS[op]
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        english = (f"What is {a} {op} {b}?", f"{a} {op} {b} = {fn(a, b)}.")
        chinese = (f"计算 {a} {zh_op} {b}。", f"{a} {zh_op} {b} 等于 {fn(a, b)}。")
        asked, other = (english, chinese) if rng.random() < 0.5 else (chinese, english)
        rows.append({"prompt": asked[0], "chosen": asked[1], "rejected": other[1]})
    return rows


@pytest.fixture(scope="module")
def language_pairs(tmp_path_factory):
    """400 training and 100 held-out language-matching pairs."""
    rng = random.Random(5)
    folder = tmp_path_factory.mktemp("language_pairs")
    train = write_jsonl(folder / "train.jsonl", language_pairs_rows(rng, 400))
    evaluation = write_jsonl(folder / "eval.jsonl", language_pairs_rows(rng, 100))
    return str(train), str(evaluation)


def config(tmp_path, pairs, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "template": "qwen2_chatml",
        "eval_before_training": True,
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": pairs[0], "eval_file": pairs[1], "max_length": 64},
        "trace": "none",
        "training_args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 16,
                          "per_device_eval_batch_size": 100, "learning_rate": 1e-3, "lr_scheduler_type": "cosine",
                          "warmup_steps": 10, "save_strategy": "no", "seed": 0, "logging_steps": 5},
    }
    for name, value in sections.items():
        values[name] = {**values[name], **value} if isinstance(value, dict) and isinstance(values.get(name), dict) else value
    return values


def load(stage, tmp_path, pairs, **sections):
    return load_config_file(stage, write_yaml(tmp_path / "config.yaml", config(tmp_path, pairs, **sections)))


def metrics_of(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]


# ---------------------------------------------------------------- rows


def test_preference_row_shapes():
    pair = row_to_preference({"prompt": "2+2?", "chosen": "4", "rejected": "5", "system": "Be brief."}, ROW)
    assert pair == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                    "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}
    llama_factory = {"conversations": [{"from": "human", "value": "2+2?"}],
                     "chosen": {"from": "gpt", "value": "4"}, "rejected": {"from": "gpt", "value": "5"}}
    assert row_to_preference(llama_factory, ROW)["prompt"] == [{"role": "user", "content": "2+2?"}]
    whole = {"chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
             "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    assert row_to_preference(whole, ROW) == {k: v for k, v in pair.items()} | {"prompt": [{"role": "user", "content": "2+2?"}]}
    kto = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}], "label": True}
    assert row_to_preference(kto, ROW) == {"prompt": [{"role": "user", "content": "2+2?"}],
                                           "completion": [{"role": "assistant", "content": "4"}], "label": True}
    renamed = PreferenceDataArgs(chosen_key="good", rejected_key="bad", margin_key="gap")
    assert row_to_preference({"prompt": "q", "good": "a", "bad": "b", "gap": 2}, renamed)["margin"] == 2.0


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "chosen equals rejected"),
        ({"prompt": "q", "rejected": "b"}, "missing field 'chosen'"),
        ({"chosen": "a", "rejected": "b"}, "no prompt"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": "yes"},
         "must be true or false"),
        ({"text": "just text"}, "set data.chosen_key / data.rejected_key"),
        ({"prompt": [{"role": "assistant", "content": "q"}], "chosen": "a", "rejected": "b"}, "prompt must end with a user turn"),
    ],
)
def test_bad_preference_rows(row, message):
    with pytest.raises(BadRow, match=message):
        row_to_preference(row, ROW)


# ---------------------------------------------------------------- reward model


def test_reward_model_learns_held_out_pairs_and_reloads(tmp_path, language_pairs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    trainer = train_rm.train(load(train_rm.STAGE, tmp_path, language_pairs, data={"max_length": 64},
                                  training_args={"max_steps": 80}))
    metrics = metrics_of(tmp_path)
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert metrics["eval_margin"] > metrics["eval_margin_before"] + 1.0, metrics

    out = tmp_path / "out"
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    row = json.loads(Path(language_pairs[1]).read_text(encoding="utf-8").splitlines()[0])
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[k]}],
                                           tokenize=False) for k in ("chosen", "rejected")]
    with torch.no_grad():
        reloaded = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]
        trained = trainer.model.eval()(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]
    torch.testing.assert_close(reloaded, trained)  # the saved directory is the trained reward model
    assert (out / "template.json").is_file() and "<|im_start|>" in tokenizer.chat_template


def test_lora_reward_model_saves_a_merged_model(tmp_path, language_pairs):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = tmp_path / "base"
    train_rm.train(load(train_rm.STAGE, tmp_path / "b", language_pairs, eval_before_training=False,
                        training_args={"output_dir": str(base), "max_steps": 1}))
    train_rm.train(load(train_rm.STAGE, tmp_path, language_pairs, model_name_or_path=str(base), model={"init_from_config": None},
                        peft={"enabled": True, "target_modules": "all-linear"}, training_args={"max_steps": 10}))
    out = tmp_path / "out"
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        adapter = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base), out).eval()(**batch).logits
        merged = AutoModelForSequenceClassification.from_pretrained(out / train_rm.MERGED_DIR).eval()(**batch).logits
    torch.testing.assert_close(merged, adapter, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- DPO family


def test_dpo_raises_held_out_reward_accuracy(tmp_path, language_pairs):
    trainer = train_dpo.train(load(train_dpo.STAGE, tmp_path, language_pairs, dpo={"beta": 0.1},
                                   training_args={"max_steps": 60}))
    metrics = metrics_of(tmp_path)
    assert metrics["eval_rewards/accuracies"] >= 0.8, metrics
    assert metrics["eval_rewards/margins"] > metrics["eval_rewards/margins_before"] + 0.5, metrics
    assert trainer.ref_model is not None  # full training: a frozen copy of the starting model


def _parameter_bytes(*modules) -> int:
    """Bytes of the distinct parameter storages held by these modules."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for m in modules if m is not None
                for p in m.parameters()}
    return sum(storages.values())


def test_lora_dpo_makes_no_reference_copy(tmp_path, language_pairs):
    from transformers import AutoConfig, AutoModelForCausalLM

    trainer = train_dpo.train(load(train_dpo.STAGE, tmp_path, language_pairs, eval_before_training=False,
                                   peft={"enabled": True, "target_modules": "all-linear"}, training_args={"max_steps": 3}))
    assert trainer.ref_model is None  # TRL switches the adapter off for the reference
    base_bytes = _parameter_bytes(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL_CONFIG)))
    adapter_bytes = sum(p.numel() * p.element_size() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert _parameter_bytes(trainer.model, trainer.ref_model) == base_bytes + adapter_bytes


@pytest.mark.parametrize("algorithm", ["kto", "orpo", "cpo", "simpo"])
def test_other_algorithms_train_with_falling_loss(tmp_path, language_pairs, algorithm):
    trainer = train_dpo.train(load(train_dpo.STAGE, tmp_path, language_pairs, dpo={"algorithm": algorithm},
                                   training_args={"max_steps": 30}))
    metrics = metrics_of(tmp_path)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses
    if algorithm == "kto":
        # KTO's loss stays near 0.5 while its KL estimate follows the policy; desirable answers must gain on the others
        assert metrics["eval_rewards/chosen"] > metrics["eval_rewards/rejected"], metrics
    else:
        assert metrics["eval_loss"] < metrics["eval_loss_before"], metrics


def test_dpo_on_llama_factory_chinese_pairs(tmp_path):
    pairs = (f"{shared_path('data', 'llamafactory', 'dpo_zh_demo.json')}#24", None)
    tokenizer = str(shared_path("tokenizers", "minimind"))
    cfg = load(train_dpo.STAGE, tmp_path, pairs, tokenizer_name_or_path=tokenizer, template="tokenizer",
               eval_before_training=False, data={"eval_file": None, "max_length": 512},
               training_args={"max_steps": 3, "per_device_train_batch_size": 4})
    trainer = train_dpo.train(cfg)
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


# ---------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"dpo": {"loss_type": "simpo"}}, "'simpo' is not a loss of dpo"),
        ({"dpo": {"algorithm": "orpo", "ref_model": "some/model"}}, "orpo uses no reference model"),
        ({"dpo": {"algorithm": "kto", "loss_type": ["kto", "apo_zero_unpaired"]}}, "only dpo combines several losses"),
        ({"dpo": {"algorithm": "orpo"}, "training_args": {"precompute_ref_log_probs": True}},
         "training_args.precompute_ref_log_probs: unknown key"),
        ({"dpo": {"algoritm": "kto"}}, "did you mean 'algorithm'?"),
        ({"training_args": {"beta": 0.5}}, "use `dpo.beta` instead"),
    ],
)
def test_bad_dpo_configs(tmp_path, language_pairs, sections, expected):
    with pytest.raises(ConfigError) as err:
        load(train_dpo.STAGE, tmp_path, language_pairs, **sections)
    assert expected in str(err.value)


def test_dry_run_shows_masked_pairs_and_unpaired_rows_need_kto(tmp_path, language_pairs):
    path = write_yaml(tmp_path / "dpo.yaml", config(tmp_path, language_pairs))
    result = run_script(DPO_SCRIPT, "--config", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--- example 0 (chosen)" in result.stdout and "--- example 0 (rejected)" in result.stdout
    preview = [json.loads(line) for line in (tmp_path / "out" / "preview.jsonl").read_text().splitlines()]
    chosen, rejected = preview[0], preview[1]
    prompt_length = chosen["labels"].count(-100)
    assert chosen["input_ids"][:prompt_length] == rejected["input_ids"][:prompt_length]  # the same prompt, masked
    assert "<|im_start|>assistant\n" in chosen["text"] and not (tmp_path / "out" / "model.safetensors").exists()

    unpaired = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": True}] * 4)
    path = write_yaml(tmp_path / "dpo.yaml", config(tmp_path, (str(unpaired), None), data={"eval_file": None}))
    result = run_script(DPO_SCRIPT, "--config", str(path), "--dry-run")
    assert result.returncode == 2 and "need dpo.algorithm: kto" in result.stderr and "Traceback" not in result.stderr
