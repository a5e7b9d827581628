"""Chat templates as data, and conversation encoding with loss masks.

A conversation is rendered to text exactly as the model sees it at inference, tokenized once as a
whole (so token ids equal those of tokenizing the rendered text: no boundary artefacts), and the
labels keep only tokens that overlap a trained character span (assistant content plus the token
that ends its turn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from self_model.errors import ConfigError, DataError

if TYPE_CHECKING:
    from self_model.config import RunConfig

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
    default_system: str | None = field(default=None, metadata={"help": "System prompt used when none is given."})
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
        lists = ("stop", "special_tokens")
        bad_types = [k for k, v in data.items() if k not in (*lists, "append_eos", "default_system") and not isinstance(v, str)]
        bad_types += [k for k in lists if k in data and not (isinstance(data[k], list) and all(isinstance(v, str) for v in data[k]))]
        if bad_types:
            raise ConfigError([f"{key}: expected a string" for key in bad_types], str(path))
        return cls(**data)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        parts = [self.bos]
        spans: list[Span] = []
        length = len(self.bos)

        def emit(text: str) -> None:
            nonlocal length
            parts.append(text)
            length += len(text)

        if messages and messages[0]["role"] != "system" and self.default_system:
            emit(self.system_prefix + self.default_system + self.system_suffix)
        for message in messages:
            role, content = message["role"], message["content"]
            if role == "system":
                emit(self.system_prefix + content + self.system_suffix)
            elif role == "user":
                emit(self.user_prefix + content + self.user_suffix)
            else:
                emit(self.assistant_prefix)
                start = length
                emit(content)
                emit(self.assistant_suffix)
                spans.append((start, start + len(content) + self._trained_suffix_length()))
        if add_generation_prompt:
            emit(self.generation_prompt if self.generation_prompt is not None else self.assistant_prefix)
        return "".join(parts), spans

    def _trained_suffix_length(self) -> int:
        """Characters of assistant_suffix up to the end of its first stop string (the end-of-turn token)."""
        ends = [self.assistant_suffix.find(s) + len(s) for s in self.stop if s and s in self.assistant_suffix]
        return min(ends) if ends else 0

    def to_jinja(self) -> str:
        """The same format as a Jinja chat_template, saved with the tokenizer so inference renders alike."""
        q = lambda text: json.dumps(text, ensure_ascii=False)
        default = (
            f"{{%- if messages[0]['role'] != 'system' %}}{{{{ {q(self.system_prefix + self.default_system + self.system_suffix)} }}}}{{%- endif %}}"
            if self.default_system
            else ""
        )
        generation = self.generation_prompt if self.generation_prompt is not None else self.assistant_prefix
        return (
            f"{{{{ {q(self.bos)} }}}}{default}"
            "{%- for message in messages %}"
            f"{{%- if message['role'] == 'system' %}}{{{{ {q(self.system_prefix)} + message['content'] + {q(self.system_suffix)} }}}}"
            f"{{%- elif message['role'] == 'user' %}}{{{{ {q(self.user_prefix)} + message['content'] + {q(self.user_suffix)} }}}}"
            f"{{%- else %}}{{{{ {q(self.assistant_prefix)} + message['content'] + {q(self.assistant_suffix)} }}}}"
            "{%- endif %}{%- endfor %}"
            f"{{%- if add_generation_prompt %}}{{{{ {q(generation)} }}}}{{%- endif %}}"
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
    """The template the config names (built-in, file, or the tokenizer's own), checked against the tokenizer."""
    if cfg.template_path:
        template = ChatTemplate.from_file(cfg.template_path)
    elif cfg.template and cfg.template != "tokenizer":
        template = ChatTemplate.from_file(TEMPLATE_DIR / f"{cfg.template}.json")
    else:
        return TokenizerTemplate(tokenizer, tokenizer_name)
    template.check_tokenizer(tokenizer, tokenizer_name)
    return template


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
    input_ids = encoding["input_ids"]
    if train_on == "everything":
        labels = list(input_ids)
    else:
        trained = spans[-1:] if train_on == "last_assistant" else spans
        labels = [
            token if any(start < span_end and end > span_start for span_start, span_end in trained) else IGNORE_INDEX
            for token, (start, end) in zip(input_ids, encoding["offset_mapping"])
        ]
    truncated = len(input_ids) > max_length
    return Encoded(input_ids[:max_length], labels[:max_length], text, truncated)
