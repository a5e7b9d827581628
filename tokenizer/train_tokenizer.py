"""Train a byte-level BPE tokenizer and save it so `AutoTokenizer.from_pretrained(output_dir)` loads it offline.

    python tokenizer/train_tokenizer.py --input examples/tiny/data/corpus.txt --vocab_size 2000 \\
        --output_dir examples/tiny/tokenizer --chat_template chatml

Inputs: `.txt` files (one document per line) and `.jsonl` files (a `text` field, or the contents of `messages`).
Special tokens: `<|endoftext|>` (id 0, pad/unk), `<|im_start|>` (id 1), `<|im_end|>` (id 2, eos).
"""

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
BYTE_ALPHABET_SIZE = 256

# Qwen2's ChatML template.
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "none": None,
}


def iter_texts(paths):
    """Yield the non-empty documents of `.txt` and `.jsonl` files."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if path.suffix == ".jsonl" and line.strip():
                    yield from jsonl_texts(line, f"{path}:{line_no}")
                elif line.strip():
                    yield line.rstrip("\n")


def jsonl_texts(line, where):
    """The text of one JSON line: its `text` field, or the contents of its `messages`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e})") from None
    if "text" in row:
        return [row["text"]]
    if "messages" in row:
        return [m["content"] for m in row["messages"] if m.get("content")]
    raise ValueError(f"{where}: expected a 'text' or 'messages' field, got keys {sorted(row)}")


def train_bpe(paths, vocab_size, min_frequency):
    """Train a byte-level BPE `tokenizers.Tokenizer` with the special tokens at ids 0, 1, 2."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(paths), trainer=trainer)
    return tok


def wrap(tok, chat_template):
    """Wrap a trained tokenizer as a transformers tokenizer with our special-token roles."""
    from transformers import PreTrainedTokenizerFast  # imported here: it loads torch; bad arguments fail fast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=PAD,
        bos_token=None,
        additional_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATES[chat_template],
        model_max_length=1024 * 1024,
        clean_up_tokenization_spaces=False,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, type=Path, help=".txt or .jsonl files to train on")
    parser.add_argument("--vocab_size", type=int, default=2000, help="size of the vocabulary, special tokens included")
    parser.add_argument("--min_frequency", type=int, default=2, help="how often a pair must occur to be merged")
    parser.add_argument("--output_dir", required=True, type=Path, help="where to save_pretrained the tokenizer")
    parser.add_argument("--chat_template", choices=sorted(CHAT_TEMPLATES), default="chatml", help="chat template")
    args = parser.parse_args()

    min_vocab = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE
    if args.vocab_size < min_vocab:
        parser.error(
            f"--vocab_size {args.vocab_size} is too small: it must be at least {min_vocab} "
            f"({len(SPECIAL_TOKENS)} special tokens + {BYTE_ALPHABET_SIZE} byte alphabet)"
        )
    missing = [str(p) for p in args.input if not p.is_file()]
    if missing:
        parser.error(f"input file not found: {', '.join(missing)}")
    try:
        if next(iter_texts(args.input), None) is None:
            parser.error(f"empty corpus: no text in {', '.join(map(str, args.input))}")
        tok = train_bpe(args.input, args.vocab_size, args.min_frequency)
    except ValueError as e:
        parser.error(str(e))

    wrap(tok, args.chat_template).save_pretrained(args.output_dir)
    print(f"saved a {tok.get_vocab_size()}-token tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
