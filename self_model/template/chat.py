"""Chat templates as data, and conversation encoding with loss masks.

A conversation is rendered to text exactly as the model sees it at inference, tokenized once as a
whole (so token ids equal those of tokenizing the rendered text: no boundary artefacts), and the
labels keep only tokens that overlap a trained character span (assistant content plus the token
that ends its turn: the closing token, the next turn's stop marker, or EOS).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from self_model.errors import ConfigError, DataError

if TYPE_CHECKING:
    from self_model.config import RunConfig

logger = logging.getLogger(__name__)
TEMPLATE_DIR = Path(__file__).resolve().parent
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")

TrainOn = Literal["all_assistant", "last_assistant", "everything"]
Message = dict[str, str]
Span = tuple[int, int]


class Renderer(Protocol):
    name: str

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        """Text of the conversation and the trained character span of each assistant turn."""

    def stop_words(self, tokenizer) -> list[str]:
        """Strings that end an assistant turn at generation time."""


@dataclass(frozen=True)
class ChatTemplate:
    """A chat format described by the text around each role's content."""

    name: str
    system_prefix: str = ""
    system_suffix: str = ""
    user_prefix: str = ""
    user_suffix: str = ""
    assistant_prefix: str = ""
    assistant_suffix: str = ""
    bos: str = field(default="", metadata={"help": "Text put before the conversation (e.g. a BOS token)."})
    default_system: str | None = field(
        default=None, metadata={"help": "System prompt used when none is given (\"\": an empty system block; null: none)."}
    )
    generation_prompt: str | None = field(
        default=None, metadata={"help": "Text that asks for a reply; defaults to assistant_prefix."}
    )
    stop: list[str] = field(default_factory=list, metadata={"help": "End-of-turn strings, trained after content."})
    special_tokens: list[str] = field(
        default_factory=list, metadata={"help": "Markers the template writes that must be single tokens of the tokenizer."}
    )
    append_eos: bool = field(
        default=False,
        metadata={"help": "Formats whose assistant turns have no closing token: train the tokenizer's EOS at the end."},
    )
    trim_content: bool = field(default=False, metadata={"help": "Strip spaces around every content (Llama 3)."})
    date_string: str | None = field(
        default=None, metadata={"help": "Replaces `{date_string}` in the texts (Llama 3.1); a Jinja variable on export."}
    )
    description: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> ChatTemplate:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError([f"template_path: cannot read {path}: {err}"], str(path)) from None
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError([f"{key}: unknown template field (valid: {', '.join(sorted(valid))})" for key in unknown], str(path))
        data = {key: value for key, value in data.items() if value is not None}  # null: the field's default
        data.setdefault("name", path.stem)
        lists, flags, nullable = ("stop", "special_tokens"), ("append_eos", "trim_content"), ("default_system", "date_string")
        problems = [f"{k}: expected a string" for k, v in data.items()
                    if k not in (*lists, *flags) and not isinstance(v, str) and not (k in nullable and v is None)]
        problems += [f"{k}: expected a list of strings" for k in lists
                     if k in data and not (isinstance(data[k], list) and all(isinstance(v, str) for v in data[k]))]
        problems += [f"{k}: expected true or false" for k in flags if k in data and not isinstance(data[k], bool)]
        if problems:
            raise ConfigError(problems, str(path))
        return cls(**data)

    def _fill(self, text: str) -> str:
        return text.replace("{date_string}", self.date_string) if self.date_string is not None else text

    @property
    def _generation_prompt(self) -> str:
        return self.generation_prompt if self.generation_prompt is not None else self.assistant_prefix

    def _closed(self, text: str, end: int) -> bool:
        """Whether the text up to `end` ends with a stop string (the reply's end-of-turn marker)."""
        return any(s and len(s) <= end and text.startswith(s, end - len(s)) for s in self.stop)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        """The text and, per assistant turn, the trained span: from the end of the generation prompt (ChatGLM3's
        `\\n ` after `<|assistant|>` is the model's to write) through the reply's end-of-turn marker: the closing
        token in assistant_suffix, else a stop string that opens the next turn (ChatGLM3's `<|user|>`)."""
        parts = [self.bos]
        spans: list[Span] = []
        length = len(self.bos)
        prompt = self._generation_prompt
        reply_offset = len(prompt) if self.assistant_prefix.startswith(prompt) else len(self.assistant_prefix)

        def emit(text: str) -> None:
            nonlocal length
            parts.append(self._fill(text))
            length += len(parts[-1])

        if messages and messages[0]["role"] != "system" and self.default_system is not None:
            emit(self.system_prefix + self.default_system + self.system_suffix)
        for message in messages:
            role, content = message["role"], message["content"]
            content = content.strip() if self.trim_content else content
            if role == "system":
                emit(self.system_prefix + content + self.system_suffix)
            elif role == "user":
                emit(self.user_prefix + content + self.user_suffix)
            else:
                start = length + len(self._fill(self.assistant_prefix[:reply_offset]))
                emit(self.assistant_prefix)
                end = length + len(content) + self._trained_suffix_length()
                emit(content)
                emit(self.assistant_suffix)
                spans.append((start, end))
        if add_generation_prompt:
            emit(prompt)
        text = "".join(parts)
        return text, [(start, end + self._marker_after(text, end)) for start, end in spans]

    def _marker_after(self, text: str, end: int) -> int:
        """Length of the stop string that follows an unclosed reply (ChatGLM3's next `<|user|>`), else 0."""
        if self._closed(text, end):
            return 0
        return next((len(s) for s in self.stop if s and text.startswith(s, end)), 0)

    def _trained_suffix_length(self) -> int:
        """Characters of assistant_suffix up to the end of its first stop string (the end-of-turn token)."""
        suffix = self._fill(self.assistant_suffix)
        ends = [suffix.find(s) + len(s) for s in self.stop if s and s in suffix]
        return min(ends) if ends else 0

    def unclosed_reply_ends(self, text: str, spans: list[Span]) -> list[int]:
        """Where a trained reply ends with no end-of-turn marker inside the text (Baichuan2 between turns): the
        token there is labelled EOS, as the maker's fine-tune script does, while the input keeps the next turn."""
        if not self.append_eos:
            return []
        return [end for _, end in spans if end < len(text) and not self._closed(text, end)]

    def to_jinja(self) -> str:
        """The same format as a Jinja chat_template, saved with the tokenizer so inference renders alike (with
        append_eos, a conversation that ends with a reply ends with EOS, as trained)."""

        def q(text: str) -> str:
            if self.date_string is None:
                return json.dumps(text, ensure_ascii=False)
            return " + date_string + ".join(json.dumps(part, ensure_ascii=False) for part in text.split("{date_string}"))

        content = "(message['content'] | trim)" if self.trim_content else "message['content']"
        date = (f"{{%- if date_string is not defined %}}{{%- set date_string = {json.dumps(self.date_string)} %}}{{%- endif %}}"
                if self.date_string is not None else "")
        default = (
            f"{{%- if messages[0]['role'] != 'system' %}}{{{{ {q(self.system_prefix + self.default_system + self.system_suffix)} }}}}{{%- endif %}}"
            if self.default_system is not None
            else ""
        )
        eos = ("{%- if messages and messages[-1]['role'] == 'assistant' %}{{ eos_token }}{%- endif %}"
               if self.append_eos else "")
        return (
            f"{date}{{{{ {q(self.bos)} }}}}{default}"
            "{%- for message in messages %}"
            f"{{%- if message['role'] == 'system' %}}{{{{ {q(self.system_prefix)} + {content} + {q(self.system_suffix)} }}}}"
            f"{{%- elif message['role'] == 'user' %}}{{{{ {q(self.user_prefix)} + {content} + {q(self.user_suffix)} }}}}"
            f"{{%- else %}}{{{{ {q(self.assistant_prefix)} + {content} + {q(self.assistant_suffix)} }}}}"
            f"{{%- endif %}}{{%- endfor %}}{eos}"
            f"{{%- if add_generation_prompt %}}{{{{ {q(self._generation_prompt)} }}}}{{%- endif %}}"
        )

    def stop_words(self, tokenizer) -> list[str]:
        words = list(self.stop)
        if self.append_eos and tokenizer.eos_token:
            words.append(tokenizer.eos_token)
        return words

    def check_tokenizer(self, tokenizer, tokenizer_name: str) -> None:
        """Every special token the template writes must be one token of this tokenizer."""
        missing = [m for m in self.special_tokens if len(tokenizer(m, add_special_tokens=False)["input_ids"]) != 1]
        if missing:
            raise ConfigError(
                [f"template: {self.name!r} writes {', '.join(missing)}, which the tokenizer {tokenizer_name!r} "
                 "does not have as single tokens; choose the template of this model family or `template: tokenizer`"],
                self.name,
            )
        if self.append_eos and not tokenizer.eos_token:
            raise ConfigError([f"template: {self.name!r} needs an EOS token; the tokenizer has none"], self.name)


class TokenizerTemplate:
    """The tokenizer's own Jinja `chat_template`, with trained spans found by rendering prefixes."""

    name = "tokenizer"

    def __init__(self, tokenizer, tokenizer_name: str):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                [f"template: `tokenizer` chosen but {tokenizer_name!r} has no chat_template; "
                 f"name a built-in template ({', '.join(builtin_templates())})"],
                tokenizer_name,
            )
        self.tokenizer = tokenizer

    def _apply(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        text = self._apply(messages, add_generation_prompt)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._apply(messages[:i], add_generation_prompt=True)
            turn = self._apply(messages[: i + 1], add_generation_prompt=False)
            if not (turn.startswith(prompt) and text.startswith(turn)):
                raise DataError(
                    "the tokenizer's chat_template renders earlier turns differently once later turns are added, "
                    "so trained spans cannot be found; use a template JSON (template: / template_path:)"
                )
            spans.append((len(prompt), len(turn.rstrip("\n"))))
        return text, spans

    def stop_words(self, tokenizer) -> list[str]:
        return [tokenizer.eos_token] if tokenizer.eos_token else []


def builtin_templates() -> list[str]:
    """Names of the templates shipped in this folder."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


def load_renderer(cfg: RunConfig, tokenizer, tokenizer_name: str) -> Renderer:
    """The template the config names (built-in, file, `auto`, or the tokenizer's own), checked against the tokenizer."""
    if cfg.template_path:
        template = ChatTemplate.from_file(cfg.template_path)
    elif cfg.template == "auto":
        name, reason = detect_family(tokenizer, tokenizer_name, model_config(cfg))
        logger.info(f"template: auto chose {name!r} ({reason})")
        template = ChatTemplate.from_file(TEMPLATE_DIR / f"{name}.json")
    elif cfg.template and cfg.template != "tokenizer":
        template = ChatTemplate.from_file(TEMPLATE_DIR / f"{cfg.template}.json")
    else:
        return TokenizerTemplate(tokenizer, tokenizer_name)
    template.check_tokenizer(tokenizer, tokenizer_name)
    return template


# `template: auto`: text of each family's official chat_template, most specific first (Qwen2.5's and Llama 3.1's
# formats contain their predecessors' markers), then tokens of its vocabulary, then the model's `model_type`.
TEMPLATE_CLUES = (
    ("qwen2_5", "You are Qwen, created by Alibaba Cloud"),
    ("llama3_1", "Cutting Knowledge Date"),
    ("llama3", "<|start_header_id|>"),
    ("chatglm3", "[gMASK]sop"),
    ("baichuan2_chat", "<reserved_107>"),
    ("deepseek_chat", "'Assistant: '"),
    ("qwen2_chatml", "<|im_start|>"),
)
VOCABULARY_CLUES = (
    ("baichuan2_chat", ("<reserved_106>", "<reserved_107>")),
    ("chatglm3", ("[gMASK]", "<|assistant|>")),
    ("llama3", ("<|start_header_id|>", "<|eot_id|>")),
    ("deepseek_chat", ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")),
    ("qwen2_chatml", ("<|im_start|>", "<|im_end|>")),
)
MODEL_TYPES = {"chatglm": "chatglm3", "baichuan": "baichuan2_chat"}


def model_config(cfg: RunConfig) -> dict:
    """The model's config.json when it is a local file or directory (no download); {} otherwise."""
    source = cfg.model.init_from_config or cfg.model_name_or_path
    path = Path(source) if source else None
    if path is not None and path.is_dir():
        path = path / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def detect_family(tokenizer, tokenizer_name: str, config: dict) -> tuple[str, str]:
    """(built-in template name, why) for `template: auto`, from the tokenizer and the model's config."""
    jinja = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(jinja, str) and jinja:
        for name in builtin_templates():
            if jinja == ChatTemplate.from_file(TEMPLATE_DIR / f"{name}.json").to_jinja():
                return name, "the tokenizer's chat_template is this template, saved by an earlier stage"
        for name, clue in TEMPLATE_CLUES:
            if clue in jinja:
                return name, f"its chat_template writes {clue!r}"
    vocabulary = tokenizer.get_vocab()
    for name, tokens in VOCABULARY_CLUES:
        if all(token in vocabulary for token in tokens):
            if name == "llama3" and (config.get("rope_scaling") or {}).get("rope_type") == "llama3":
                return "llama3_1", f"the tokenizer has {', '.join(tokens)} and the model Llama 3.1's rope_scaling"
            return name, f"the tokenizer has {', '.join(tokens)}"
    model_type = config.get("model_type", "")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type], f"model_type {model_type!r}"
    raise ConfigError(
        [f"template: auto cannot tell the chat format of {tokenizer_name!r} (no known marker in its chat_template "
         f"or vocabulary{f', model_type {model_type!r}' if model_type else ''}); name one "
         f"({', '.join(builtin_templates())}) or `template: tokenizer`"],
        tokenizer_name,
    )


def use_chat_template(tokenizer, renderer: Renderer) -> None:
    """Make the tokenizer's `apply_chat_template` render our template (TRL's trainers and vLLM call it)."""
    if isinstance(renderer, ChatTemplate):
        tokenizer.chat_template = renderer.to_jinja()


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str
    truncated: bool


def encode_conversation(
    messages: list[Message], tokenizer, renderer: Renderer, train_on: TrainOn, max_length: int
) -> Encoded:
    """Render, tokenize once, and label only the trained spans; truncate to max_length."""
    text, spans = renderer.render(messages)
    ends_with_reply = bool(messages) and messages[-1]["role"] == "assistant"
    if isinstance(renderer, ChatTemplate) and renderer.append_eos and tokenizer.eos_token and ends_with_reply:
        text += tokenizer.eos_token
        spans = [*spans[:-1], (spans[-1][0], len(text))]  # the last reply, through the EOS appended after it
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    if train_on == "everything":
        labels = list(input_ids)
    else:
        trained = spans[-1:] if train_on == "last_assistant" else spans
        labels = [
            token if any(start < span_end and end > span_start for span_start, span_end in trained) else IGNORE_INDEX
            for token, (start, end) in zip(input_ids, offsets)
        ]
        for end in renderer.unclosed_reply_ends(text, trained) if isinstance(renderer, ChatTemplate) else []:
            index = next((i for i, (start, _) in enumerate(offsets) if start >= end), None)
            if index is not None:
                labels[index] = tokenizer.eos_token_id
    truncated = len(input_ids) > max_length
    return Encoded(input_ids[:max_length], labels[:max_length], text, truncated)
