"""Train a byte-level BPE or SentencePiece-style unigram tokenizer that `AutoTokenizer.from_pretrained` loads offline.

    python tokenizer/train_tokenizer.py --input examples/tiny/data/corpus.txt --vocab_size 2000 \\
        --output_dir examples/tiny/tokenizer --chat_template chatml
    python tokenizer/train_tokenizer.py --input corpus.jsonl notes.txt --txt_blocks --model_type unigram \\
        --vocab_size 32000 --special_tokens "<tool_call>" "</tool_call>" --chat_template my_template.jinja \\
        --output_dir checkpoints/my_tokenizer

Inputs: `.jsonl` files (a `text` field, or the contents of `messages`) and text files (one document a line, or
with `--txt_blocks` documents separated by blank lines).
Special tokens: `<|endoftext|>` (id 0, pad/unk), `<|im_start|>` (id 1), `<|im_end|>` (id 2, eos), then
`--special_tokens`.

Both models round-trip text: decode(encode(x)) == x for any NFC text (NFC only merges canonically equivalent
spellings such as "e" + combining accent into "é"), with one exception for unigram: the character "▁" (U+2581),
which it uses to mark spaces, decodes as a space.
- bpe: GPT-2/Qwen2-style byte-level BPE; every byte is a token, so nothing is ever unknown.
- unigram: a SentencePiece-style unigram model (`▁` for spaces, no dummy prefix, byte fallback): characters seen
  in training are whole tokens (one token per Chinese character at worst), others are spelled as `<0x..>` bytes.
  Built with the `tokenizers` library's Unigram model, so it needs no `sentencepiece` package.
"""

import argparse
import json
from itertools import groupby
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from self_model.data.sources import TEXT_ENCODING, check_text_file, not_utf8
from self_model.errors import DataError, UserError, exit_on_user_error

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]
BYTE_ALPHABET_SIZE = 256
BYTE_PIECES = [f"<0x{byte:02X}>" for byte in range(BYTE_ALPHABET_SIZE)]

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


def iter_texts(paths, txt_blocks=False):
    """Yield the non-empty documents of `.jsonl` files and text files (a line each, or a blank-line-separated block)."""
    for path in paths:
        check_text_file(path)
        try:
            with open(path, encoding=TEXT_ENCODING) as f:
                if path.suffix != ".jsonl":
                    yield from txt_documents(f, txt_blocks)
                    continue
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield from jsonl_texts(line, f"{path}:{line_no}")
        except UnicodeDecodeError:
            raise not_utf8(path) from None


def txt_documents(lines, blocks):
    """The documents of a text file: each non-blank line, or each run of non-blank lines when `blocks`."""
    if not blocks:
        return (line.rstrip("\n") for line in lines if line.strip())
    runs = groupby(lines, key=lambda line: bool(line.strip()))
    return ("".join(run).rstrip("\n") for non_blank, run in runs if non_blank)


def jsonl_texts(line, where):
    """The text of one JSON line: its `text` field, or the contents of its `messages`."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e})") from None
    if "text" in row:
        return [row["text"]]
    if "messages" in row:
        return [m["content"] for m in row["messages"] if m.get("content")]
    raise DataError(f"{where}: expected a 'text' or 'messages' field, got keys {sorted(row)}")


def train_bpe(texts, vocab_size, min_frequency, special_tokens):
    """Train a byte-level BPE `tokenizers.Tokenizer` with the special tokens first (ids 0, 1, 2, ...)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_unigram(texts, vocab_size, special_tokens):
    """Train a SentencePiece-style unigram `tokenizers.Tokenizer` with byte fallback, special tokens first."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFC()
    # prepend_scheme "never": a dummy space before the first word would make a leading space vanish on decode
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="never")])
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - BYTE_ALPHABET_SIZE,
        special_tokens=special_tokens,
        unk_token=PAD,
        # the characters of "<0xFF>" stay in the vocabulary so that such literal text never needs a byte piece
        initial_alphabet=sorted(set("".join(BYTE_PIECES))),
        show_progress=False,
    )
    try:
        tok.train_from_iterator(texts, trainer=trainer)
    except Exception as err:  # tokenizers raises a plain Exception
        if "not large enough to contain all chars" not in str(err):
            raise
        raise UserError(
            f"--vocab_size {vocab_size} is too small for --model_type unigram: it keeps every character of the "
            f"corpus plus {BYTE_ALPHABET_SIZE} byte pieces; raise --vocab_size or use --model_type bpe"
        ) from None
    return with_byte_fallback(tok)


def with_byte_fallback(tok):
    """Add the byte pieces `<0x00>`..`<0xFF>` to a unigram model: characters outside its vocabulary become bytes."""
    spec = json.loads(tok.to_str())
    pieces = spec["model"]["vocab"]
    # Scored below any spelling of "<0x41>" by its characters, so literal text is never read as a byte piece.
    score = len(BYTE_PIECES[0]) * min(score for _, score in pieces) - 1
    pieces += [[piece, score] for piece in BYTE_PIECES]
    spec["model"]["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(spec))


def load_chat_template(value):
    """The Jinja text for `--chat_template`: a built-in name, or the contents of a file."""
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    path = Path(value)
    if not path.is_file():
        names = ", ".join(CHAT_TEMPLATES)
        raise UserError(f"--chat_template {value}: not one of {names} and not a file; pass a name or a .jinja file")
    return path.read_text(encoding="utf-8")


def wrap(tok, chat_template, extra_special_tokens=()):
    """Wrap a trained tokenizer as a transformers tokenizer with our special-token roles."""
    from transformers import PreTrainedTokenizerFast  # imported here: it loads torch; bad arguments fail fast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=PAD,
        bos_token=None,
        additional_special_tokens=[IM_START, *extra_special_tokens],
        chat_template=chat_template,
        model_max_length=1024 * 1024,
        clean_up_tokenization_spaces=False,
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, type=Path, help=".jsonl or text files to train on")
    parser.add_argument("--txt_blocks", action="store_true", help="text files: documents are separated by blank lines")
    parser.add_argument("--model_type", choices=["bpe", "unigram"], default="bpe", help="byte-level BPE or unigram")
    parser.add_argument("--vocab_size", type=int, default=2000, help="size of the vocabulary, special tokens included")
    parser.add_argument("--min_frequency", type=int, default=2, help="bpe: how often a pair must occur to be merged")
    parser.add_argument("--special_tokens", nargs="*", default=[], help=f"added after {', '.join(SPECIAL_TOKENS)}")
    parser.add_argument("--chat_template", default="chatml", help="chatml, none, or a .jinja file")
    parser.add_argument("--output_dir", required=True, type=Path, help="where to save_pretrained the tokenizer")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    special_tokens = list(dict.fromkeys(SPECIAL_TOKENS + args.special_tokens))
    min_vocab = len(special_tokens) + BYTE_ALPHABET_SIZE
    if args.vocab_size < min_vocab:
        raise UserError(
            f"--vocab_size {args.vocab_size} is too small: it must be at least {min_vocab} "
            f"({len(special_tokens)} special tokens + {BYTE_ALPHABET_SIZE} bytes)"
        )
    missing = [str(p) for p in args.input if not p.is_file()]
    if missing:
        raise UserError(f"input file not found: {', '.join(missing)} (--input)")
    chat_template = load_chat_template(args.chat_template)
    if next(iter_texts(args.input, args.txt_blocks), None) is None:
        raise DataError(f"--input: empty corpus: no text in {', '.join(map(str, args.input))}")

    texts = iter_texts(args.input, args.txt_blocks)
    if args.model_type == "bpe":
        tok = train_bpe(texts, args.vocab_size, args.min_frequency, special_tokens)
    else:
        tok = train_unigram(texts, args.vocab_size, special_tokens)
    wrap(tok, chat_template, special_tokens[len(SPECIAL_TOKENS) :]).save_pretrained(args.output_dir)
    print(f"saved a {tok.get_vocab_size()}-token {args.model_type} tokenizer to {args.output_dir}")


if __name__ == "__main__":
    main()
