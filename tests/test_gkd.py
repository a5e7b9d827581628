"""GKD on tiny models: the student's KL to a frozen teacher falls on held-out conversations, the teacher is never
trained, vocabularies are checked before any weight is loaded (a head with extra padding rows is mapped, another
tokenizer refused), and a teacher that does not load is answered with one message (exit code 2).

The teacher is the tiny demo model after a short SFT run on the sample chats (peaked where the data is, far from the
fresh student); the vocabulary tests use random-init teachers saved with the demo tokenizer.
"""

from __future__ import annotations

import json

import pytest
import torch

from self_model.config import load_config_file, training_arg_types
from self_model.distill import train_gkd
from self_model.errors import UserError
from self_model.modeling import load_tokenizer
from self_model.stage import build_training_args
from tests.helpers import SFT_EVAL, SFT_TRAIN, TINY_MODEL_CONFIG, TINY_TOKENIZER, tiny_sft_config, write_yaml

TINY_VOCAB = 1856


def make_teacher(folder, vocab_size: int = TINY_VOCAB, tokenizer=None):
    """A random-init teacher saved with the demo tokenizer (or `tokenizer`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(TINY_MODEL_CONFIG, vocab_size=vocab_size)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    (tokenizer or AutoTokenizer.from_pretrained(TINY_TOKENIZER)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny demo model after 12 SFT steps."""
    from self_model.fine_tuning import train_finetune

    folder = tmp_path_factory.mktemp("teacher")
    sft = tiny_sft_config(folder, data={"eval_file": None}, training_args={"output_dir": str(folder / "out"), "max_steps": 12})
    train_finetune.train(load_config_file(train_finetune.STAGE, write_yaml(folder / "sft.yaml", sft)))
    return folder / "out"


def config(tmp_path, teacher_path, **sections) -> dict:
    values = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "template": "qwen2_chatml",
        "eval_before_training": True,
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": f"{SFT_TRAIN}#128", "eval_file": f"{SFT_EVAL}#32", "max_length": 96},
        "gkd": {"teacher": str(teacher_path) if teacher_path else None, "lmbda": 0.5, "beta": 0.0, "max_new_tokens": 8},
        "trace": "none",
        "training_args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8,
                          "per_device_eval_batch_size": 32, "learning_rate": 3e-3, "max_steps": 8,
                          "warmup_steps": 2, "save_strategy": "no", "seed": 0, "logging_steps": 5},
    }
    for name, value in sections.items():
        values[name] = {**values[name], **value} if isinstance(value, dict) and isinstance(values.get(name), dict) else value
    return values


def load(tmp_path, teacher_path, **sections):
    return load_config_file(train_gkd.STAGE, write_yaml(tmp_path / "c.yaml", config(tmp_path, teacher_path, **sections)))


def test_student_kl_to_the_teacher_falls_on_held_out_conversations(tmp_path, teacher):
    from transformers import AutoModelForCausalLM

    trainer = train_gkd.train(load(tmp_path, teacher))
    metrics = json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]
    # beta 0: TRL's generalised JSD is KL(teacher || student) per completion token
    assert metrics["eval_loss"] < 0.6 * metrics["eval_loss_before"], metrics

    frozen = trainer.teacher_model
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.dtype == torch.float32  # CPU precision
    saved = AutoModelForCausalLM.from_pretrained(teacher).state_dict()
    assert all(torch.equal(value, saved[name]) for name, value in frozen.state_dict().items())  # never trained
    assert trainer.args.lmbda == 0.5 and trainer.args.max_new_tokens == 8


def test_supervised_distillation_from_a_lora_sft_teacher_needs_no_sampling(tmp_path, teacher, monkeypatch):
    from trl.experimental.gkd import GKDTrainer

    from self_model.fine_tuning import train_finetune

    lora = tiny_sft_config(tmp_path / "sft", model_name_or_path=str(teacher), model={"init_from_config": None},
                           peft={"enabled": True}, data={"eval_file": None},
                           training_args={"output_dir": str(tmp_path / "lora"), "max_steps": 1})
    train_finetune.train(load_config_file(train_finetune.STAGE, write_yaml(tmp_path / "sft.yaml", lora)))
    assert (tmp_path / "lora" / "adapter_config.json").is_file()  # an adapter directory, loaded with its base

    def no_sampling(*args, **kwargs):
        raise AssertionError("lmbda 0 sampled from the student")

    monkeypatch.setattr(GKDTrainer, "generate_on_policy_outputs", staticmethod(no_sampling))
    trainer = train_gkd.train(load(tmp_path, tmp_path / "lora", eval_before_training=False, gkd={"lmbda": 0.0},
                                   data={"eval_file": f"{SFT_EVAL}#8"}, training_args={"max_steps": 2}))
    assert trainer.state.global_step == 2
    frozen = dict(trainer.teacher_model.named_parameters())
    assert any("lora_" in name for name in frozen) and not any(p.requires_grad for p in frozen.values())


def test_a_teacher_with_padding_rows_is_mapped_onto_the_student(tmp_path):
    from transformers import AutoModelForCausalLM

    wide = make_teacher(tmp_path / "wide", vocab_size=TINY_VOCAB + 64)
    cfg = load(tmp_path, wide)
    training_args = build_training_args(cfg, train_gkd.STAGE)
    tokenizer = load_tokenizer(cfg)
    teacher_cfg = train_gkd.teacher_config(cfg, training_args)
    rows = train_gkd.check_vocabularies(cfg, teacher_cfg, tokenizer)
    assert rows == TINY_VOCAB
    mapped = train_gkd.load_teacher(teacher_cfg, tokenizer, training_args, rows)
    ids = torch.tensor([tokenizer("What is 2 + 2?")["input_ids"]])
    with torch.no_grad():
        full = AutoModelForCausalLM.from_pretrained(wide).eval()(ids).logits
        assert mapped.get_output_embeddings().weight.shape[0] == TINY_VOCAB
        torch.testing.assert_close(mapped(ids).logits, full[..., :TINY_VOCAB])

    narrow = make_teacher(tmp_path / "narrow", vocab_size=TINY_VOCAB - 64)
    with pytest.raises(UserError, match="only a teacher with extra padding rows"):
        train_gkd.check_vocabularies(cfg, train_gkd.teacher_config(load(tmp_path, narrow), training_args), tokenizer)


def test_another_vocabulary_is_refused_before_loading_weights(tmp_path, capsys):
    from transformers import AutoConfig, AutoTokenizer

    other = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    other.add_tokens(["<|tool|>"])
    folder = tmp_path / "other"
    AutoConfig.from_pretrained(TINY_MODEL_CONFIG).save_pretrained(folder)  # a config but no weights: never loaded
    other.save_pretrained(folder)
    path = write_yaml(tmp_path / "c.yaml", config(tmp_path, folder))
    with pytest.raises(SystemExit) as exit_info:
        train_gkd.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "another vocabulary than the student" in err and "'<|tool|>'" in err


@pytest.mark.parametrize("teacher_of, message", [
    (lambda tmp: tmp / "broken", "does not load"),
    (lambda tmp: "./no/such/teacher", "is neither an existing path nor a hub id"),
    (lambda tmp: None, "gkd.teacher"),
])
def test_a_teacher_that_does_not_load_exits_2(tmp_path, capsys, teacher_of, message):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    path = write_yaml(tmp_path / "c.yaml", config(tmp_path, teacher_of(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:
        train_gkd.main(["--config", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


def test_teacher_equal_to_the_student_and_sft_only_keys_are_refused(tmp_path, teacher):
    from self_model.errors import ConfigError

    with pytest.raises(ConfigError, match="divergence and its gradient are zero"):
        load(tmp_path, teacher, model_name_or_path=str(teacher), model={"init_from_config": None})
    with pytest.raises(ConfigError, match="training_args.packing.*has no effect"):
        load(tmp_path, teacher, training_args={"packing": True})
    fields = training_arg_types(train_gkd.STAGE.training_args_class)  # TRL still names every field we set or refuse
    assert set(train_gkd.STAGE.owned_training_args) | set(train_gkd.SFT_ONLY_FIELDS) <= set(fields)


def test_an_on_policy_step_divides_its_loss_by_the_sampled_tokens(tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from self_model.distill.gkd_trainer import RecountingGKDTrainer

    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL_CONFIG))
    teacher = AutoModelForCausalLM.from_pretrained(make_teacher(tmp_path / "teacher"))
    args = GKDConfig(output_dir=str(tmp_path / "out"), lmbda=1.0, beta=0.5, max_new_tokens=16, report_to="none",
                     bf16=False)
    # a data batch of prompts (left-padded, as sampling needs) with a one-token completion each
    prompts = tokenizer(["What is 2 + 2?", "Name a colour."], padding=True, padding_side="left", return_tensors="pt")
    answers = torch.tensor([[tokenizer.convert_tokens_to_ids("4")], [tokenizer.eos_token_id]])
    ids = torch.cat([prompts.input_ids, answers], dim=1)
    batch = {"prompts": prompts.input_ids, "prompt_attention_mask": prompts.attention_mask, "input_ids": ids,
             "attention_mask": torch.cat([prompts.attention_mask, torch.ones_like(answers)], dim=1),
             "labels": torch.where(ids == answers.expand_as(ids), ids, -100)}

    sampled = []

    def sample_once(*inputs):  # the same completions for both trainers
        if not sampled:
            sampled.append(GKDTrainer.generate_on_policy_outputs(*inputs))
        return sampled[0]

    losses = {}
    for trainer_class in (RecountingGKDTrainer, GKDTrainer):
        trainer = trainer_class(model=student, teacher_model=teacher, args=args, processing_class=tokenizer,
                                train_dataset=Dataset.from_dict({key: value.tolist() for key, value in batch.items()}))
        monkeypatch.setattr(trainer, "generate_on_policy_outputs", sample_once)
        count = trainer._get_num_items_in_batch([batch], student.device)
        assert count == 2  # the data batch's completion tokens
        losses[trainer_class] = trainer.training_step(student, dict(batch), count).item()

    new_ids, new_mask, new_labels = sampled[0]
    assert (new_labels[:, 1:] != -100).sum() > 2 * count  # more sampled tokens than the data batch's
    with torch.no_grad():
        expected = GKDTrainer.generalized_jsd_loss(student(new_ids, attention_mask=new_mask).logits[:, :-1],
                                                   teacher(new_ids, attention_mask=new_mask).logits[:, :-1],
                                                   labels=new_labels[:, 1:], beta=0.5).item()
    assert abs(losses[RecountingGKDTrainer] - expected) < 1e-5, (losses, expected)
    assert abs(losses[GKDTrainer] - expected) > 1e-3  # TRL 1.12 divides by the data batch's 2 tokens
