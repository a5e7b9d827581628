"""Chat templates: the JSON files in this folder (see README.md), the tokenizer's own Jinja template, and the encoding
of a conversation into token ids with loss labels."""

from self_model.template.chat import (
    IGNORE_INDEX,
    TEMPLATE_DIR,
    ChatTemplate,
    Encoded,
    Renderer,
    TokenizerTemplate,
    builtin_templates,
    encode_conversation,
    load_renderer,
    use_chat_template,
)

__all__ = [
    "IGNORE_INDEX", "TEMPLATE_DIR", "ChatTemplate", "Encoded", "Renderer", "TokenizerTemplate", "builtin_templates",
    "encode_conversation", "load_renderer", "use_chat_template",
]
