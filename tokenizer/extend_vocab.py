"""Extend a BPE tokenizer with tokens learned on domain text, and resize a model's embeddings to match.

    uv run python tokenizer/extend_vocab.py --base_tokenizer path/to/base --base_model path/to/base \\
        --domain_corpus domain.jsonl --general_corpus general.txt --new_tokens 2000

Writes `<output_dir>/merged_tokenizer`, `<output_dir>/merged_model` (with `--base_model`; the tokenizer is saved
there too, so the next stage can use it as `model_name_or_path`) and `<output_dir>/fertility.json`: tokens per
character on held-out domain text (and `--general_corpus`), base vs merged. `output_dir` defaults to `tokenizer`,
so a stage config names `model_name_or_path: tokenizer/merged_model` and `tokenizer_name_or_path:
tokenizer/merged_tokenizer`. Nothing of them appears until everything is written; other files in `output_dir` are
left alone, and outputs of an earlier run are replaced only with `--overwrite`.

New tokens are BPE merges appended after the base's merges, not `tokenizer.add_tokens`: added tokens are matched
in the raw text before pre-tokenization, so they cut words anywhere and change how the text around them splits.
A BPE applies its merges lowest rank first, so with the new merges ranked last it first reaches the base's split
of every word and then, as no old merge takes a new token, only joins neighbouring pieces into new tokens. Hence
every old id is unchanged, every merged tokenization is a coarsening of the base one (never more tokens), and
text that uses no new token tokenizes exactly as before. The tokens come from a BPE trained on the domain text
with the base's normalizer and pre-tokenizer, taken in merge order, kept when the base lacks them and one merge
of two pieces can make them.

A new token's embedding (and LM-head row when untied) starts as the mean of the rows of the base tokenizer's
pieces of that token (`--init mean_of_pieces`) or of all old rows (`--init mean`); old rows are untouched, so the
model's logits for the old tokens are unchanged on inputs of old tokens.
"""

import argparse
import itertools
import json
import math
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

from tokenizers import Tokenizer, models, trainers

from self_model.errors import DataError, UserError, exit_on_user_error
from tokenizer.train_tokenizer import iter_texts


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base_tokenizer", required=True, help="directory of a fast BPE tokenizer (tokenizer.json)")
    parser.add_argument("--base_model", help="causal LM directory to resize; without it only the tokenizer is extended")
    parser.add_argument("--domain_corpus", nargs="+", required=True, type=Path, help=".jsonl or text files (domain)")
    parser.add_argument("--general_corpus", nargs="+", type=Path, help="general text for the fertility report")
    parser.add_argument("--txt_blocks", action="store_true", help="text files: documents are separated by blank lines")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--new_tokens", type=int, help="how many tokens to add (fewer if the corpus has no more)")
    size.add_argument("--vocab_size", type=int, help="size of the merged tokenizer (len), larger than the base's")
    parser.add_argument("--held_out", type=float, default=0.1, help="share of domain documents kept for the report")
    parser.add_argument("--init", choices=["mean_of_pieces", "mean"], default="mean_of_pieces", help="new rows' start")
    parser.add_argument("--output_dir", type=Path, default=Path("tokenizer"),
                        help="where merged_tokenizer/, merged_model/ and fertility.json go (default: tokenizer)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    return parser.parse_args(argv)


OUTPUTS = ("merged_tokenizer", "merged_model", "fertility.json")


def check_output_dir(output_dir, overwrite):
    """Refuse to replace an earlier run's outputs unless `overwrite`."""
    found = [name for name in OUTPUTS if (output_dir / name).exists()]
    if found and not overwrite:
        raise UserError(f"--output_dir {output_dir} already holds {', '.join(found)}; pass --overwrite to replace "
                        "them, or choose another --output_dir")


def load_base_tokenizer(path):
    """The base tokenizer: a fast tokenizer whose model is a BPE."""
    from transformers import AutoTokenizer  # imported here: it loads torch, and argument errors need not wait

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"--base_tokenizer {path}: cannot load it ({str(err).strip().splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise UserError(
            f"--base_tokenizer {path} loads as a slow tokenizer ({type(tokenizer).__name__}); new tokens are added as "
            "BPE merges in tokenizer.json: pass a fast tokenizer (a directory with tokenizer.json)"
        )
    model = tokenizer.backend_tokenizer.model
    if not isinstance(model, models.BPE):
        raise UserError(f"--base_tokenizer {path} is a {type(model).__name__} tokenizer; only BPE ones can be extended")
    return tokenizer


def new_token_count(args, base_size):
    """How many tokens to add, from --new_tokens or --vocab_size."""
    if args.vocab_size is not None and args.vocab_size <= base_size:
        raise UserError(
            f"--vocab_size {args.vocab_size} is not larger than the base tokenizer's {base_size} tokens "
            f"({args.base_tokenizer}); pass a larger --vocab_size, or --new_tokens"
        )
    count = args.new_tokens if args.new_tokens is not None else args.vocab_size - base_size
    if count < 1:
        raise UserError(f"--new_tokens {count}: must be at least 1")
    return count


def read_corpus(paths, flag, txt_blocks):
    """All documents of a corpus given by `flag`; an empty or missing one is an error."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"{flag}: file not found: {', '.join(missing)}")
    docs = list(iter_texts(paths, txt_blocks))
    if not docs:
        raise DataError(f"{flag}: empty corpus: no text in {', '.join(map(str, paths))}")
    return docs


def split_held_out(docs, share):
    """(training documents, held-out documents): a fixed-seed sample of `share` of them is held out."""
    if not 0 < share < 1:
        raise UserError(f"--held_out {share}: must be between 0 and 1 (a share of the domain documents)")
    held = set(random.Random(0).sample(range(len(docs)), max(1, round(len(docs) * share))))
    if len(held) == len(docs):
        raise DataError(
            f"--domain_corpus has {len(docs)} document(s): too few to hold out {share:.0%} and train on the rest; "
            "add documents (one a line, or blank-line-separated blocks with --txt_blocks)"
        )
    return [d for i, d in enumerate(docs) if i not in held], [docs[i] for i in sorted(held)]


def load_base_model(path, tokenizer):
    """The causal LM to resize; its embedding matrix must have a row for every base token."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    except (OSError, ValueError) as err:
        raise UserError(f"--base_model {path}: cannot load it ({str(err).strip().splitlines()[0]})") from None
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise UserError(
            f"--base_model {path} has {rows} embedding rows but --base_tokenizer {tokenizer.name_or_path} has "
            f"{len(tokenizer)} tokens: they do not belong together; pass the tokenizer the model was trained with"
        )
    return model


def learn_domain_merges(base, docs, count):
    """Up to `count` merges (left, right) of tokens the base lacks, in the order a BPE trained on `docs` learns them."""
    backend = base.backend_tokenizer
    domain = Tokenizer(models.BPE())
    domain.normalizer = backend.normalizer
    domain.pre_tokenizer = backend.pre_tokenizer
    # As large as the merged vocabulary: at most len(base) of its tokens can already be in the base.
    # min_frequency 2: a piece seen once in the domain is not worth an embedding row.
    trainer = trainers.BpeTrainer(vocab_size=len(base) + count, min_frequency=2, show_progress=False)
    domain.train_from_iterator(docs, trainer=trainer)

    base_vocab = backend.get_vocab()
    new_merges, new_tokens = {}, set()  # new_merges: (left, right) -> rank among the new merges
    for left, right in json.loads(domain.to_str())["model"]["merges"]:
        token = left + right
        if token in base_vocab or token in new_tokens:
            continue
        pieces = bpe_split(backend.model, new_merges, token)
        # two pieces that spell the token (byte-fallback pieces do not): one merge makes it
        if len(pieces) == 2 and "".join(pieces) == token:
            new_merges[tuple(pieces)] = len(new_merges)
            new_tokens.add(token)
            if len(new_merges) == count:
                break
    return list(new_merges)


def bpe_split(base_model, new_merges, token):
    """How BPE splits `token` with `new_merges` ranked after the base's: its base pieces, then new merges joining them.

    Done here because tokenizers cannot add merges to a model, and rebuilding one for every candidate is too slow."""
    pieces = [piece.value for piece in base_model.tokenize(token)]
    while len(pieces) > 1:
        rank, i = min((new_merges.get(pair, math.inf), i) for i, pair in enumerate(itertools.pairwise(pieces)))
        if rank == math.inf:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def build_merged_tokenizer(base, merges, directory):
    """Save `base` with `merges` appended (their tokens get the next ids) to `directory` and load it back."""
    from transformers import AutoTokenizer

    base.save_pretrained(directory)
    spec = json.loads(base.backend_tokenizer.to_str())
    for token_id, (left, right) in enumerate(merges, start=len(base)):
        spec["model"]["vocab"][left + right] = token_id
    spec["model"]["merges"] += [[left, right] for left, right in merges]
    Tokenizer.from_str(json.dumps(spec)).save(str(directory / "tokenizer.json"))
    return AutoTokenizer.from_pretrained(directory)


def resize_model(model, base, merged, init):
    """Give `model` a row for every merged token and start each new row from the base rows (`init`)."""
    import torch

    old_size, new_size = len(base), len(merged)
    if new_size > model.get_input_embeddings().weight.shape[0]:
        # a multiple of 64 as load_model pads (GPU matmuls prefer it); the new rows are set below
        model.resize_token_embeddings(new_size, pad_to_multiple_of=64, mean_resizing=False)
    new_tokens = merged.convert_ids_to_tokens(range(old_size, new_size))
    pieces = [[piece.id for piece in base.backend_tokenizer.model.tokenize(token)] for token in new_tokens]
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for weight in [inputs] if outputs is inputs else [inputs, outputs]:
            old_mean = weight[:old_size].float().mean(0)
            for token_id, piece_ids in enumerate(pieces, start=old_size):
                row = weight[piece_ids].float().mean(0) if init == "mean_of_pieces" else old_mean
                weight[token_id] = row.to(weight.dtype)


def tokens_per_char(tokenizer, docs):
    """Tokens over characters of `docs` (no special tokens)."""
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    return sum(map(len, ids)) / sum(map(len, docs))


def fertility_report(base, merged, texts):
    """Tokens per character of each named list of documents, base vs merged."""
    report = {}
    for name, docs in texts.items():
        before, after = tokens_per_char(base, docs), tokens_per_char(merged, docs)
        report[name] = {
            "documents": len(docs),
            "characters": sum(map(len, docs)),
            "base_tokens_per_char": round(before, 5),
            "merged_tokens_per_char": round(after, 5),
            "change": round(after / before - 1, 5),
        }
    return report


def format_report(report):
    """The fertility report as a table."""
    header = f"{'text':<16}{'documents':>10}{'characters':>12}{'base tok/char':>15}{'merged tok/char':>17}{'change':>9}"
    lines = [header]
    for name, row in report.items():
        lines.append(
            f"{name:<16}{row['documents']:>10}{row['characters']:>12}{row['base_tokens_per_char']:>15.4f}"
            f"{row['merged_tokens_per_char']:>17.4f}{row['change']:>9.1%}"
        )
    return "\n".join(lines)


@contextmanager
def staged_output(output_dir):
    """A directory beside `output_dir` whose outputs replace the earlier ones in `output_dir` (all of them, so none
    is left from another run) only when the block succeeds."""
    output_dir = output_dir.resolve()  # so that "." has a name and a parent
    staging = output_dir.with_name(f".{output_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed run
    staging.mkdir(parents=True)
    try:
        yield staging
        output_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:  # earlier ones exist only with --overwrite (checked before any work)
            old = output_dir / name
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            if (staging / name).exists():
                (staging / name).rename(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    check_output_dir(args.output_dir, args.overwrite)
    base = load_base_tokenizer(args.base_tokenizer)
    base_size = len(base)
    count = new_token_count(args, base_size)
    domain = read_corpus(args.domain_corpus, "--domain_corpus", args.txt_blocks)
    train_docs, held_out = split_held_out(domain, args.held_out)
    texts = {"domain held-out": held_out}
    if args.general_corpus:
        texts["general"] = read_corpus(args.general_corpus, "--general_corpus", args.txt_blocks)
    model = load_base_model(args.base_model, base) if args.base_model else None

    merges = learn_domain_merges(base, train_docs, count)
    if len(merges) < count:
        print(f"note: the domain corpus yields {len(merges)} new tokens, fewer than the {count} asked for")
    with staged_output(args.output_dir) as staging:
        merged = build_merged_tokenizer(base, merges, staging / "merged_tokenizer")
        report = fertility_report(base, merged, texts)
        sizes = {"base": base_size, "merged": len(merged)}
        summary = {"vocab_size": sizes, "tokens_per_char": report}
        (staging / "fertility.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if model is not None:
            resize_model(model, base, merged, args.init)
            model.save_pretrained(staging / "merged_model")
            merged.save_pretrained(staging / "merged_model")
    examples = [merged.decode([i]) for i in range(base_size, base_size + min(10, len(merges)))]
    print(f"added {len(merges)} tokens ({base_size} -> {sizes['merged']}), the first: {examples}")
    print(format_report(report))
    print(f"saved to {args.output_dir}")


if __name__ == "__main__":
    main()
