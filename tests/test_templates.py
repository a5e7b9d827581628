"""Chat templates: our ChatTemplate renders exactly each family's official format, encodes without
boundary artefacts, and labels exactly the assistant turns with each one's end-of-turn marker; the tokenizer's
own template; pad tokens.

Every tokenizer is built here, offline: a tiny byte-level BPE trained on a few hundred English and
Chinese sentences, with each family's special tokens added. The official templates are the Jinja files the
makers ship, read from ../shared/reference/chat_templates/ (those tests skip without it); Qwen2-Instruct's and
Baichuan2's format (which ships no Jinja) are written below.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from self_model.data.preference import encode as encode_preference
from self_model.errors import ConfigError, DataError
from self_model.modeling import set_distinct_pad_token
from self_model.template import IGNORE_INDEX, TEMPLATE_DIR, ChatTemplate, TokenizerTemplate, encode_conversation
from self_model.template.chat import detect_family
from tests.helpers import shared_path

MINIMIND = Path(__file__).resolve().parents[2] / "shared/tokenizers/minimind"
needs_minimind = pytest.mark.skipif(not (MINIMIND / "tokenizer.json").is_file(), reason=f"no tokenizer at {MINIMIND}")

# --------------------------------------------------------------------------------------------------
# The official chat formats

OFFICIAL_FILES = {
    "qwen2_5": "qwen2_5_instruct.jinja",
    "llama3": "llama3_8b_instruct.jinja",
    "llama3_1": "llama3_1_8b_instruct.jinja",
    "chatglm3": "chatglm3_6b.jinja",
    "deepseek_chat": "deepseek_llm_7b_chat.jinja",
}
# String literals keep real newlines, as the hub JSON decodes to.
INLINE_JINJA = {
    # Qwen/Qwen2-7B-Instruct (and Qwen1.5-Chat).
    "qwen2_chatml": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # baichuan-inc/Baichuan2-7B-Chat ships no chat_template: this is its generation_utils.build_chat_input
    # (system text first, user_token_id=<reserved_106>, assistant_token_id=<reserved_107>) as Jinja.
    "baichuan2_chat": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '<reserved_106>' + message['content'] }}"
        "{% else %}{{ '<reserved_107>' + message['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
    ),
}

CHATML = {"special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
LLAMA3 = {
    "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
}
# Each family's special tokens and bos/eos/pad, as in its tokenizer_config.json.
FAMILIES = {
    "qwen2_chatml": CHATML,
    "qwen2_5": CHATML,
    "llama3": LLAMA3,
    "llama3_1": LLAMA3,
    "chatglm3": {
        "special": ["<unk>", "<s>", "</s>", "[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"],
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
    },
    "baichuan2_chat": {
        "special": ["<unk>", "<s>", "</s>", "<reserved_106>", "<reserved_107>"],
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
    },
    "deepseek_chat": {
        "special": ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"],
        "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>", "pad_token": "<｜end▁of▁sentence｜>",
    },
}
TEMPLATES = sorted(FAMILIES)
# What each reply is trained with, as the makers' own fine-tuning does: (the marker after a reply that another turn
# follows, the marker after the conversation's last reply). ChatGLM3's finetune_hf.py trains the next role token
# (`<|user|>`) and EOS at the end; Baichuan2's fine-tune.py labels EOS after every reply while the input goes on.
TURN_END = {
    "qwen2_chatml": ("<|im_end|>", "<|im_end|>"), "qwen2_5": ("<|im_end|>", "<|im_end|>"),
    "llama3": ("<|eot_id|>", "<|eot_id|>"), "llama3_1": ("<|eot_id|>", "<|eot_id|>"),
    "deepseek_chat": ("<｜end▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "chatglm3": ("<|user|>", "</s>"), "baichuan2_chat": ("</s>", "</s>"),
}
# The text between the official generation prompt and the reply, which the model writes and so is trained.
REPLY_LEAD = {"chatglm3": "\n ", "deepseek_chat": " "}

SYSTEM = {"role": "system", "content": "You answer briefly."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "12 + 7 = 19."}],
    "single_system": [
        SYSTEM,
        {"role": "user", "content": "Name a primary colour."},
        {"role": "assistant", "content": "Red is a primary colour."},
    ],
    "multi": [
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a fact about the moon."},
        {"role": "assistant", "content": "The moon has no atmosphere to speak of.\nIt is about 384,400 km away."},
    ],
    "multi_system": [
        SYSTEM,
        {"role": "user", "content": "Is 9 prime?"},
        {"role": "assistant", "content": "No, 9 = 3 x 3."},
        {"role": "user", "content": "And 7?"},
        {"role": "assistant", "content": "Yes, 7 is prime."},
    ],
    "spaces": [{"role": "user", "content": " What is 2 + 2? "}, {"role": "assistant", "content": " 4\n"}],
    "chinese": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "计算 12 加 7。"},
        {"role": "assistant", "content": "12 加 7 等于 19。"},
        {"role": "user", "content": "北京是哪个国家的首都？"},
        {"role": "assistant", "content": "北京是中国的首都。"},
    ],
}
# Prompts (ending with a user turn) for add_generation_prompt=True.
PROMPTS = {
    "user": [{"role": "user", "content": "What is 2 + 2?"}],
    "system_user": [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}],
    "history": CONVERSATIONS["multi"][:3],
    "chinese": CONVERSATIONS["chinese"][:4],
}


def template(name: str) -> ChatTemplate:
    return ChatTemplate.from_file(TEMPLATE_DIR / f"{name}.json")


# --------------------------------------------------------------------------------------------------
# Tokenizers


def _corpus() -> list[str]:
    subjects = ["The user", "The assistant", "A student", "My teacher", "The system", "You", "We"]
    verbs = ["asks about", "explains", "likes", "writes about", "answers questions on"]
    objects = ["prime numbers", "the moon", "primary colours", "history", "machine learning", "the weather"]
    english = [f"{s} {v} {o}." for s, v, o in itertools.product(subjects, verbs, objects)]
    zh_subjects = ["我", "你", "他们", "老师", "学生", "助手", "用户"]
    zh_verbs = ["喜欢", "学习", "讨论", "回答", "计算"]
    zh_objects = ["数学", "历史", "中文", "机器学习", "天气", "北京", "中国的首都"]
    chinese = [f"{s}{v}{o}。" for s, v, o in itertools.product(zh_subjects, zh_verbs, zh_objects)]
    extra = ["User: What is 12 + 7?\n\nAssistant: 12 + 7 = 19.", "system\nuser\nassistant\n",
             "You are a helpful assistant.", "Hello! How can I help you today?", "12 加 7 等于 19。"]
    return english + chinese + extra


@pytest.fixture(scope="session")
def bpe_json() -> str:
    """A tiny byte-level BPE (no special tokens), serialized; each family adds its own."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok.to_str()


def make_tokenizer(bpe_json: str, special: list[str], chat_template: str | None = None, **roles) -> PreTrainedTokenizerFast:
    backend = Tokenizer.from_str(bpe_json)
    backend.add_special_tokens(special)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **roles)
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="session")
def family_tokenizers(bpe_json) -> dict[str, PreTrainedTokenizerFast]:
    """Per template name: a tokenizer with that family's special tokens, bos/eos/pad, and our template as its
    chat_template (as open_stage sets it for TRL's trainers)."""
    out = {}
    for name, family in FAMILIES.items():
        roles = {k: v for k, v in family.items() if k != "special"}
        out[name] = make_tokenizer(bpe_json, family["special"], template(name).to_jinja(), **roles)
    return out


@pytest.fixture(scope="session")
def minimind():
    if not (MINIMIND / "tokenizer.json").is_file():
        pytest.skip(f"no tokenizer at {MINIMIND}")
    return AutoTokenizer.from_pretrained(MINIMIND)


@pytest.fixture
def minimind_qwen2(minimind):
    """The minimind tokenizer with the official Qwen2-Instruct chat_template instead of its own."""
    tokenizer = copy.deepcopy(minimind)
    tokenizer.chat_template = INLINE_JINJA["qwen2_chatml"]
    return tokenizer


def apply(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def official(name: str, messages, add_generation_prompt=False) -> str:
    """The family's official template rendered by transformers, with the bos/eos its tokenizer sets."""
    if name in INLINE_JINJA:
        jinja = INLINE_JINJA[name]
    else:
        jinja = shared_path("reference", "chat_templates", OFFICIAL_FILES[name]).read_text(encoding="utf-8")
    family = FAMILIES[name]
    rendered, _ = render_jinja_template([messages], chat_template=jinja, add_generation_prompt=add_generation_prompt,
                                        bos_token=family.get("bos_token", ""), eos_token=family["eos_token"])
    return rendered[0]


def with_final_eos(name: str, messages, text: str) -> str:
    """The training text of an append_eos family: EOS after a final reply (the official formats have none)."""
    ends_with_reply = messages[-1]["role"] == "assistant"
    return text + FAMILIES[name]["eos_token"] if template(name).append_eos and ends_with_reply else text


def labelled_runs(tokenizer, encoded) -> list[str]:
    """Decoded labels of each maximal run of consecutive labelled tokens."""
    runs, current = [], []
    for label in encoded.labels:
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(label)
    if current:
        runs.append(current)
    return [tokenizer.decode(run, skip_special_tokens=False) for run in runs]


def expected_runs(name: str, messages, last_only=False) -> list[str]:
    """Each trained reply (trimmed where the official template trims) with what precedes and ends it."""
    trim = name.startswith("llama3")
    replies = [m["content"].strip() if trim else m["content"] for m in messages if m["role"] == "assistant"]
    between, final = TURN_END[name]
    ends_with_reply = messages[-1]["role"] == "assistant"
    runs = [REPLY_LEAD.get(name, "") + reply + (final if i == len(replies) - 1 and ends_with_reply else between)
            for i, reply in enumerate(replies)]
    return runs[-1:] if last_only else runs


# --------------------------------------------------------------------------------------------------
# 1. Render equals the official format


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_render_matches_official_format(name, conversation):
    messages = CONVERSATIONS[conversation]
    text, spans = template(name).render(messages)
    assert text == official(name, messages)
    assert len(spans) == sum(m["role"] == "assistant" for m in messages)


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_generation_prompt_matches_official_format(name, prompt):
    messages = PROMPTS[prompt]
    assert template(name).render(messages, add_generation_prompt=True)[0] == official(name, messages, True)
    assert template(name).render(messages)[0] == official(name, messages)


def test_qwen_families_differ_only_in_default_system():
    """Qwen2.5's default system names Qwen; Qwen2's does not; with a system message they are the same."""
    user_only = CONVERSATIONS["single"]
    assert "You are Qwen, created by Alibaba Cloud." in template("qwen2_5").render(user_only)[0]
    assert "<|im_start|>system\nYou are a helpful assistant.<|im_end|>" in template("qwen2_chatml").render(user_only)[0]
    with_system = CONVERSATIONS["single_system"]
    assert template("qwen2_5").render(with_system) == template("qwen2_chatml").render(with_system)


def test_llama3_1_date_string_is_configurable():
    t = ChatTemplate(**{**template("llama3_1").__dict__, "date_string": "02 Dec 2026"})
    text, _ = t.render(CONVERSATIONS["single"])
    assert "Cutting Knowledge Date: December 2023\nToday Date: 02 Dec 2026\n\n<|eot_id|>" in text
    # the export keeps date_string a variable, as the official template does
    rendered, _ = render_jinja_template([CONVERSATIONS["single"]], chat_template=t.to_jinja(), date_string="01 Jan 2025",
                                        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    assert "Today Date: 01 Jan 2025" in rendered[0]
    assert official("llama3_1", CONVERSATIONS["single"]) == template("llama3_1").render(CONVERSATIONS["single"])[0]


def test_chatglm3_generation_prompt_is_prefix_of_trained_turn():
    t = template("chatglm3")
    prompt, _ = t.render(PROMPTS["user"], add_generation_prompt=True)
    full, spans = t.render([*PROMPTS["user"], {"role": "assistant", "content": "4"}])
    assert prompt.endswith("<|assistant|>") and full == prompt + "\n 4"
    assert spans == [(len(prompt), len(full))]  # the "\n " the model writes after <|assistant|> is trained


@needs_minimind
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_qwen2_render_matches_official_on_minimind(conversation, minimind_qwen2):
    messages = CONVERSATIONS[conversation]
    assert template("qwen2_chatml").render(messages)[0] == apply(minimind_qwen2, messages)
    prompt = messages[:-1]
    assert template("qwen2_chatml").render(prompt, add_generation_prompt=True)[0] == apply(
        minimind_qwen2, prompt, add_generation_prompt=True
    )


@needs_minimind
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_tokenizer_template_renders_its_chat_template(conversation, minimind):
    renderer = TokenizerTemplate(minimind, "minimind")
    messages = CONVERSATIONS[conversation]
    assert renderer.render(messages)[0] == apply(minimind, messages)
    assert renderer.render(messages[:-1], add_generation_prompt=True)[0] == apply(
        minimind, messages[:-1], add_generation_prompt=True
    )
    assert renderer.stop_words(minimind) == ["<|im_end|>"]


# --------------------------------------------------------------------------------------------------
# 2. Token ids are those of the rendered text tokenized whole


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_input_ids_are_the_rendered_text_tokenized(name, conversation, family_tokenizers):
    tokenizer, t, messages = family_tokenizers[name], template(name), CONVERSATIONS[conversation]
    encoded = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=4096)
    rendered = with_final_eos(name, messages, t.render(messages)[0])
    assert encoded.input_ids == tokenizer(rendered, add_special_tokens=False).input_ids
    assert encoded.text == rendered == apply(tokenizer, messages)  # the exported Jinja renders the training text
    assert not encoded.truncated
    # Every special marker of the format is one token (no marker split across tokens).
    for marker in FAMILIES[name]["special"]:
        if marker in encoded.text:
            assert tokenizer.convert_tokens_to_ids(marker) in encoded.input_ids


@needs_minimind
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_input_ids_on_minimind(conversation, minimind):
    messages = CONVERSATIONS[conversation]
    for renderer in (template("qwen2_chatml"), TokenizerTemplate(minimind, "minimind")):
        encoded = encode_conversation(messages, minimind, renderer, "all_assistant", max_length=4096)
        assert encoded.input_ids == minimind(renderer.render(messages)[0], add_special_tokens=False).input_ids


# --------------------------------------------------------------------------------------------------
# 3. Labels


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_labels_all_assistant(name, conversation, family_tokenizers):
    """Each reply is trained through its end-of-turn marker; no prompt token is (every label outside the replies'
    runs is -100; Baichuan2's EOS label sits on the next turn's first token, which the input keeps)."""
    tokenizer, t, messages = family_tokenizers[name], template(name), CONVERSATIONS[conversation]
    encoded = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=4096)
    assert labelled_runs(tokenizer, encoded) == expected_runs(name, messages)
    relabelled = [i for i, (token, label) in enumerate(zip(encoded.input_ids, encoded.labels)) if label not in (token, IGNORE_INDEX)]
    assert all(encoded.labels[i] == tokenizer.eos_token_id for i in relabelled)
    assert bool(relabelled) == (name == "baichuan2_chat" and sum(m["role"] == "assistant" for m in messages) > 1)


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATES)
def test_labels_last_assistant(name, conversation, family_tokenizers):
    tokenizer, t, messages = family_tokenizers[name], template(name), CONVERSATIONS[conversation]
    encoded = encode_conversation(messages, tokenizer, t, "last_assistant", max_length=4096)
    assert labelled_runs(tokenizer, encoded) == expected_runs(name, messages, last_only=True)


@pytest.mark.parametrize("name", TEMPLATES)
def test_preference_answers_end_with_the_end_of_turn_marker(name, family_tokenizers):
    """RM and the DPO family: TRL renders prompt and prompt + answer with the tokenizer's chat_template (ours); the
    answer's tokens are the reply with its final end-of-turn marker, the prompt's carry nothing of it."""
    tokenizer, messages = family_tokenizers[name], CONVERSATIONS["multi_system"]
    prompt_ids, answer_ids = encode_preference(tokenizer, messages[:-1], messages[-1:])
    answer = tokenizer.decode(answer_ids, skip_special_tokens=False)
    want = expected_runs(name, messages, last_only=True)[0]
    assert answer.startswith(want) and not answer[len(want):].strip()
    assert tokenizer.decode(prompt_ids, skip_special_tokens=False) == apply(tokenizer, messages[:-1], True)


@pytest.mark.parametrize("name", TEMPLATES)
def test_labels_everything(name, family_tokenizers):
    tokenizer, t = family_tokenizers[name], template(name)
    encoded = encode_conversation(CONVERSATIONS["multi_system"], tokenizer, t, "everything", max_length=4096)
    assert encoded.labels == encoded.input_ids


def test_labels_exclude_headers_and_following_newline(family_tokenizers):
    """ChatML: `<|im_end|>` is trained, the "\\n" after it and `<|im_start|>assistant\\n` are not."""
    tokenizer, t = family_tokenizers["qwen2_chatml"], template("qwen2_chatml")
    encoded = encode_conversation(CONVERSATIONS["single"], tokenizer, t, "all_assistant", max_length=4096)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    last_end = len(encoded.input_ids) - 1 - encoded.input_ids[::-1].index(im_end)
    assert encoded.labels[last_end] == im_end
    assert encoded.input_ids[last_end + 1:] == tokenizer("\n", add_special_tokens=False).input_ids
    assert all(label == IGNORE_INDEX for label in encoded.labels[last_end + 1:])
    # Everything before the reply (system, user, `<|im_start|>assistant\n`) is untrained.
    header = tokenizer(encoded.text[: encoded.text.index("12 + 7 = 19.")], add_special_tokens=False).input_ids
    assert encoded.input_ids[: len(header)] == header
    assert set(encoded.labels[: len(header)]) == {IGNORE_INDEX}


@pytest.mark.parametrize("name", TEMPLATES)
def test_truncation_cuts_both_lists(name, family_tokenizers):
    tokenizer, t, messages = family_tokenizers[name], template(name), CONVERSATIONS["multi"]
    full = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=4096)
    n = len(full.input_ids)
    exact = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=n)
    assert not exact.truncated and exact.input_ids == full.input_ids
    cut = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=n - 5)
    assert cut.truncated
    assert cut.input_ids == full.input_ids[: n - 5] and cut.labels == full.labels[: n - 5]
    assert len(cut.input_ids) == len(cut.labels) == n - 5


@pytest.mark.parametrize("name", ["chatglm3", "baichuan2_chat"])
def test_append_eos_with_trailing_user_turn(name, family_tokenizers):
    # The data loader only passes conversations ending with an assistant turn; a reply another turn follows is
    # still closed by the family's marker, and no role token of the user's turn is trained as itself.
    tokenizer, t = family_tokenizers[name], template(name)
    messages = CONVERSATIONS["multi"][:3]
    encoded = encode_conversation(messages, tokenizer, t, "all_assistant", max_length=4096)
    assert labelled_runs(tokenizer, encoded) == expected_runs(name, messages)


@needs_minimind
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_labels_qwen2_on_minimind(conversation, minimind):
    t, messages = template("qwen2_chatml"), CONVERSATIONS[conversation]
    for train_on, last_only in (("all_assistant", False), ("last_assistant", True)):
        encoded = encode_conversation(messages, minimind, t, train_on, max_length=4096)
        want = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
        assert labelled_runs(minimind, encoded) == (want[-1:] if last_only else want)


@needs_minimind
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_labels_tokenizer_template_minimind(conversation, minimind):
    """minimind's template puts an empty `<think>\\n\\n</think>\\n\\n` before every assistant reply and in
    the generation prompt: the trained span starts after the generation prompt, so the think block is
    never trained; the content and `<|im_end|>` are, the "\\n" after it is not."""
    renderer, messages = TokenizerTemplate(minimind, "minimind"), CONVERSATIONS[conversation]
    text, spans = renderer.render(messages)
    assert text.count("<think>\n\n</think>\n\n") == sum(m["role"] == "assistant" for m in messages)
    for start, end in spans:
        assert text[:start].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
        assert text[start:end].endswith("<|im_end|>")
    encoded = encode_conversation(messages, minimind, renderer, "all_assistant", max_length=4096)
    want = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert labelled_runs(minimind, encoded) == want
    think = {minimind.convert_tokens_to_ids("<think>"), minimind.convert_tokens_to_ids("</think>")}
    assert think <= set(encoded.input_ids)
    assert not think & {label for label in encoded.labels if label != IGNORE_INDEX}
    last = encode_conversation(messages, minimind, renderer, "last_assistant", max_length=4096)
    assert labelled_runs(minimind, last) == want[-1:]


@needs_minimind
def test_tokenizer_template_refuses_reasoning_it_cannot_span(minimind):
    """A reply with its own reasoning renders a non-empty think block, so the generation prompt (with the
    empty one) is no prefix of the turn: a clear DataError, not silently wrong labels."""
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"}]
    with pytest.raises(DataError, match="renders earlier turns differently"):
        TokenizerTemplate(minimind, "minimind").render(messages)


# --------------------------------------------------------------------------------------------------
# 4. to_jinja renders as render()


@pytest.mark.parametrize("name", TEMPLATES)
def test_to_jinja_matches_render(name, family_tokenizers):
    t, tokenizer = template(name), family_tokenizers[name]
    for messages in CONVERSATIONS.values():
        assert apply(tokenizer, messages) == with_final_eos(name, messages, t.render(messages)[0])
    for messages in PROMPTS.values():
        for add in (False, True):
            assert apply(tokenizer, messages, add_generation_prompt=add) == t.render(messages, add)[0]


def test_to_jinja_escapes_quotes_and_backslashes(family_tokenizers):
    t = ChatTemplate(name="odd", user_prefix='U "q" \\n \'s\n', assistant_prefix="A：", assistant_suffix="{{ x }}\n",
                     default_system="S {% raw %}", stop=["{{ x }}"])
    tokenizer = copy.deepcopy(family_tokenizers["qwen2_chatml"])
    tokenizer.chat_template = t.to_jinja()
    for messages in (*CONVERSATIONS.values(), *PROMPTS.values()):
        assert apply(tokenizer, messages, add_generation_prompt=True) == t.render(messages, True)[0]


# --------------------------------------------------------------------------------------------------
# 5. Checks


@pytest.mark.parametrize("name", TEMPLATES)
def test_check_tokenizer_accepts_own_family(name, family_tokenizers):
    template(name).check_tokenizer(family_tokenizers[name], name)


def test_check_tokenizer_names_missing_markers(family_tokenizers):
    chatml = family_tokenizers["qwen2_chatml"]
    with pytest.raises(ConfigError) as err:
        template("llama3").check_tokenizer(chatml, "chatml-only")
    for marker in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        assert marker in str(err.value)
    assert "chatml-only" in str(err.value) and "<|im_end|>" not in str(err.value)
    for name, marker in (("chatglm3", "[gMASK]"), ("baichuan2_chat", "<reserved_106>"),
                         ("deepseek_chat", "<｜end▁of▁sentence｜>")):
        with pytest.raises(ConfigError, match=f"{name}.*{marker}".replace("[", r"\[").replace("|", r"\|")):
            template(name).check_tokenizer(chatml, "chatml-only")


def test_check_tokenizer_needs_eos_for_append_eos(bpe_json):
    tokenizer = make_tokenizer(bpe_json, FAMILIES["baichuan2_chat"]["special"])
    with pytest.raises(ConfigError, match="EOS"):
        template("baichuan2_chat").check_tokenizer(tokenizer, "no-eos")


def test_tokenizer_template_needs_chat_template(bpe_json):
    tokenizer = make_tokenizer(bpe_json, ["<|endoftext|>"], eos_token="<|endoftext|>")
    with pytest.raises(ConfigError, match="no chat_template") as err:
        TokenizerTemplate(tokenizer, "bare")
    assert "qwen2_chatml" in str(err.value)


def test_from_file_rejects_unknown_field(tmp_path):
    data = json.loads((TEMPLATE_DIR / "qwen2_chatml.json").read_text(encoding="utf-8"))
    data["assistant_sufix"] = "<|im_end|>\n"
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConfigError, match="assistant_sufix: unknown template field"):
        ChatTemplate.from_file(path)


def test_from_file_rejects_bad_json_and_types(tmp_path):
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        ChatTemplate.from_file(tmp_path / "broken.json")
    (tmp_path / "typed.json").write_text(json.dumps({"user_prefix": 3}), encoding="utf-8")
    with pytest.raises(ConfigError, match="user_prefix: expected a string"):
        ChatTemplate.from_file(tmp_path / "typed.json")
    (tmp_path / "named.json").write_text(json.dumps({"user_prefix": "U:"}), encoding="utf-8")
    assert ChatTemplate.from_file(tmp_path / "named.json").name == "named"


@pytest.mark.parametrize("name", TEMPLATES)
def test_stop_words(name, family_tokenizers):
    t, tokenizer = template(name), family_tokenizers[name]
    words = t.stop_words(tokenizer)
    assert (tokenizer.eos_token in words) == (t.append_eos or tokenizer.eos_token in t.stop)
    assert set(TURN_END[name]) <= set(words)


# --------------------------------------------------------------------------------------------------
# 6. set_distinct_pad_token


def test_pad_added_when_missing(bpe_json):
    tokenizer = make_tokenizer(bpe_json, ["<|endoftext|>"], eos_token="<|endoftext|>")
    assert tokenizer.pad_token is None
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer("<|pad|>", add_special_tokens=False).input_ids == [tokenizer.pad_token_id]


def test_pad_equal_to_eos_is_replaced(bpe_json):
    tokenizer = make_tokenizer(bpe_json, ["<|endoftext|>"], eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_pad_prefers_existing_unused_token(bpe_json, family_tokenizers):
    # An unk token distinct from eos.
    tokenizer = make_tokenizer(bpe_json, ["<unk>", "</s>"], eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token == "<unk>"
    # Llama 3 style: no unk, reserved special tokens.
    tokenizer = make_tokenizer(bpe_json, [*FAMILIES["llama3"]["special"], "<|reserved_special_token_0|>"],
                               bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    n = len(tokenizer)
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|reserved_special_token_0|>" and len(tokenizer) == n
    # Never the bos (unk == bos is skipped too).
    tokenizer = make_tokenizer(bpe_json, ["<s>", "</s>"], bos_token="<s>", eos_token="</s>", unk_token="<s>")
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token not in ("<s>", "</s>")


def test_pad_kept_when_already_distinct(family_tokenizers):
    tokenizer = copy.deepcopy(family_tokenizers["qwen2_chatml"])
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>"


@needs_minimind
def test_pad_on_minimind(minimind):
    tokenizer = copy.deepcopy(minimind)
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token == "<|endoftext|>"
    tokenizer.pad_token = tokenizer.eos_token
    set_distinct_pad_token(tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id


# --------------------------------------------------------------------------------------------------
# 7. template: auto


@pytest.mark.parametrize("name", TEMPLATES)
def test_auto_detects_each_family_from_its_official_template(name, bpe_json):
    family = FAMILIES[name]
    roles = {k: v for k, v in family.items() if k != "special"}
    jinja = INLINE_JINJA.get(name) or shared_path("reference", "chat_templates", OFFICIAL_FILES[name]).read_text(encoding="utf-8")
    if name == "baichuan2_chat":
        jinja = None  # Baichuan2 ships no chat_template: its reserved tokens tell
    tokenizer = make_tokenizer(bpe_json, family["special"], jinja, **roles)
    assert detect_family(tokenizer, name, {})[0] == name
    tokenizer.chat_template = template(name).to_jinja()  # saved by an earlier stage
    assert detect_family(tokenizer, name, {}) == (name, "the tokenizer's chat_template is this template, saved by an earlier stage")


def test_auto_without_chat_template_uses_vocabulary_and_model_type(bpe_json):
    llama = make_tokenizer(bpe_json, FAMILIES["llama3"]["special"], **{"eos_token": "<|eot_id|>"})
    assert detect_family(llama, "llama", {})[0] == "llama3"
    assert detect_family(llama, "llama", {"rope_scaling": {"rope_type": "llama3"}})[0] == "llama3_1"
    bare = make_tokenizer(bpe_json, ["<|endoftext|>"], eos_token="<|endoftext|>")
    assert detect_family(bare, "glm", {"model_type": "chatglm"}) == ("chatglm3", "model_type 'chatglm'")
    with pytest.raises(ConfigError, match="template: auto cannot tell the chat format of 'bare'.*model_type 'gpt2'"):
        detect_family(bare, "bare", {"model_type": "gpt2"})
