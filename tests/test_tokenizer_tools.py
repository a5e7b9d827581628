"""tokenizer/: training a tokenizer, extending a base tokenizer with domain tokens and resizing its model."""

import json
from itertools import accumulate

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, ByT5Tokenizer

from tests.helpers import REPO, TINY, TINY_MODEL_CONFIG, TINY_TOKENIZER, run_script, shared_path, write_jsonl
from tokenizer import extend_vocab, train_tokenizer

CORPUS = TINY / "data" / "corpus.txt"
CHAT_DATA = TINY / "data" / "sft_train.jsonl"
ROUND_TRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "计算 12 加 7。12 加 7 等于 19。北京是中国的首都。",
    "  leading spaces, two  spaces, trailing space \tand\ttabs\n\nblank line\r\nCRLF\n",
    " ",
    "emoji 🙂🚀👩‍👩‍👧 naïve café Ω ≈ ∑",
    "Mixed 中英文 text <0x41> ｆｕｌｌｗｉｄｔｈ",
]


def run_main(module, *args):
    """Run a script's main in this process (sparing a torch import); returns its exit code (0 without SystemExit)."""
    try:
        module.main([str(a) for a in args])
    except SystemExit as stop:
        return stop.code
    return 0


def tiny_model(path, vocab_size, tied):
    """Save a random-init tiny Qwen2 (examples/tiny/model_config.json) with `vocab_size` embedding rows."""
    settings = json.loads(TINY_MODEL_CONFIG.read_text())
    settings.update(vocab_size=vocab_size, tie_word_embeddings=tied)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings)).save_pretrained(path)
    return path


def llamafactory(name):
    """A LLaMA-Factory demo data file under ../shared (the test skips without it)."""
    return shared_path("data", "llamafactory", name)


def round_trips(tokenizer, text):
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


# --- train_tokenizer.py -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_chinese_english_whitespace_emoji(tmp_path, model_type):
    out = tmp_path / "tok"
    args = ["--input", CORPUS, CHAT_DATA, "--model_type", model_type, "--vocab_size", 1500, "--output_dir", out]
    assert run_main(train_tokenizer, *args, "--special_tokens", "<tool_call>", "</tool_call>") == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert [t for t in ROUND_TRIP_TEXTS if not round_trips(tok, t)] == []
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
    assert tok.convert_tokens_to_ids(specials) == [0, 1, 2, 3, 4]
    assert tok.encode("<tool_call>x</tool_call>", add_special_tokens=False)[::2] == [3, 4]  # whole, around "x"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok.apply_chat_template([{"role": "user", "content": " hi"}], tokenize=False).endswith(
        "<|im_start|>user\n hi<|im_end|>\n"
    )
    assert 1000 < len(tok) <= 1500


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_real_text(tmp_path, model_type):
    wiki, c4 = llamafactory("wiki_demo.txt"), llamafactory("c4_demo.jsonl")
    alpaca_zh = json.loads(llamafactory("alpaca_zh_demo.json").read_text(encoding="utf-8"))
    chinese = [f"{row['instruction']}{row['input']}\n{row['output']}" for row in alpaca_zh]
    zh_train = write_jsonl(tmp_path / "zh.jsonl", [{"text": t} for t in chinese[:2000]])
    wiki_part = tmp_path / "wiki.txt"
    wiki_part.write_text("".join(wiki.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    out = tmp_path / "tok"
    assert run_main(train_tokenizer, "--input", wiki_part, zh_train, "--model_type", model_type, "--vocab_size", 8000,
                    "--output_dir", out) == 0  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    held_out = [json.loads(line)["text"] for line in c4.read_text(encoding="utf-8").splitlines()] + chinese[2000:]
    assert [t[:80] for t in held_out if not round_trips(tok, t)] == []


def test_train_tokenizer_reads_blank_line_blocks_and_a_jinja_template(tmp_path):
    corpus = tmp_path / "blocks.txt"
    corpus.write_text("first line\nsame document\n\n\nsecond document\n  \nthird\n", encoding="utf-8")
    assert list(train_tokenizer.iter_texts([corpus], txt_blocks=True)) == [
        "first line\nsame document", "second document", "third"
    ]  # fmt: skip
    assert list(train_tokenizer.iter_texts([corpus])) == ["first line", "same document", "second document", "third"]
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    out = tmp_path / "tok"
    assert run_main(train_tokenizer, "--input", corpus, CORPUS, "--txt_blocks", "--chat_template", template,
                    "--vocab_size", 400, "--output_dir", out) == 0  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "user: hi\n"


@pytest.mark.parametrize(
    "case, message",
    [
        ("unigram_small_vocab", "--vocab_size 300 is too small for --model_type unigram"),
        ("missing_template", "--chat_template nope.jinja: not one of chatml, none"),
        ("bad_jsonl", "bad.jsonl:2: expected a 'text' or 'messages' field"),
    ],
)
def test_train_tokenizer_bad_input(tmp_path, capsys, case, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"content": "no text"}])
    args = {
        "unigram_small_vocab": ["--input", CORPUS, "--model_type", "unigram", "--vocab_size", 300],
        "missing_template": ["--input", CORPUS, "--chat_template", "nope.jinja"],
        "bad_jsonl": ["--input", bad],
    }[case]
    assert run_main(train_tokenizer, *args, "--output_dir", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- extend_vocab.py ----------------------------------------------------------------------------------------------


def extend(root, base_tokenizer, domain, general, model_rows, tied, *options):
    """Run extend_vocab.py in this process with a fresh tiny model of `model_rows` rows; returns what tests compare."""
    base_model = tiny_model(root / "base_model", model_rows, tied)
    args = ["--base_tokenizer", base_tokenizer, "--base_model", base_model, "--domain_corpus", domain, *options]
    assert run_main(extend_vocab, *args, "--general_corpus", general, "--output_dir", root / "out") == 0
    return {
        "out": root / "out",
        "base": AutoTokenizer.from_pretrained(base_tokenizer),
        "merged": AutoTokenizer.from_pretrained(root / "out" / "merged_tokenizer"),
        "base_model": base_model,
        "domain": domain,
        "general": general,
    }


@pytest.fixture(scope="module")
def minimind_run(tmp_path_factory):
    """minimind (6400 tokens) + 1000 tokens from wiki_demo.txt; an untied tiny model; c4 as general text."""
    minimind = shared_path("tokenizers", "minimind")
    wiki, c4 = llamafactory("wiki_demo.txt"), llamafactory("c4_demo.jsonl")
    return extend(tmp_path_factory.mktemp("minimind"), minimind, wiki, c4, 6400, False, "--new_tokens", 1000)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The demo tokenizer (1842 tokens) + tokens from the README, which it never saw; a tied model with 1856 rows."""
    root = tmp_path_factory.mktemp("tiny")
    return extend(root, TINY_TOKENIZER, REPO / "README.md", CORPUS, 1856, True, "--vocab_size", 2000)


@pytest.fixture(params=["minimind_run", "tiny_run"])
def run(request):
    return request.getfixturevalue(request.param)


def general_texts(run, limit=None):
    return list(train_tokenizer.iter_texts([run["general"]]))[:limit]


def test_extension_keeps_every_old_id_and_appends_the_new(run):
    base, merged = run["base"], run["merged"]
    old, new = base.get_vocab(), merged.get_vocab()
    assert {token: new[token] for token in old} == old
    assert sorted(set(new.values()) - set(old.values())) == list(range(len(base), len(merged)))
    assert merged.get_added_vocab() == base.get_added_vocab() and merged.special_tokens_map == base.special_tokens_map
    assert merged.chat_template == base.chat_template
    assert (run["out"] / "merged_model" / "tokenizer.json").read_bytes() == (
        run["out"] / "merged_tokenizer" / "tokenizer.json"
    ).read_bytes()


def test_extension_only_joins_base_pieces_on_real_text(run):
    """Every merged tokenization is the base one with neighbours joined; a word using no new token is unchanged."""
    docs = general_texts(run)
    before = run["base"].backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    after = run["merged"].backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    old_size, unchanged_words = len(run["base"]), 0
    for old, new in zip(before, after):
        assert set(accumulate(map(len, new.tokens))) <= set(accumulate(map(len, old.tokens)))
        old_words, new_words = ids_by_word(old), ids_by_word(new)
        for word, ids in new_words.items():
            if max(ids) < old_size:
                assert ids == old_words[word]
                unchanged_words += 1
    assert unchanged_words > 1000


def ids_by_word(encoding):
    """The token ids of each pre-tokenized word of an encoding."""
    words = {}
    for word, token_id in zip(encoding.word_ids, encoding.ids):
        words.setdefault(word, []).append(token_id)
    return words


def test_extension_lowers_domain_fertility(minimind_run, capsys):
    run = minimind_run
    report = json.loads((run["out"] / "fertility.json").read_text())
    docs = list(train_tokenizer.iter_texts([run["domain"]]))
    _, held_out = extend_vocab.split_held_out(docs, 0.1)
    measured = {
        "domain held-out": [extend_vocab.tokens_per_char(t, held_out) for t in (run["base"], run["merged"])],
        "general": [extend_vocab.tokens_per_char(t, general_texts(run)) for t in (run["base"], run["merged"])],
    }
    for name, (before, after) in measured.items():
        with capsys.disabled():
            print(f"\n+1000 wiki tokens, {name}: {before:.4f} -> {after:.4f} tokens/char ({after / before - 1:+.1%})")
        row = report["tokens_per_char"][name]
        assert (row["base_tokens_per_char"], row["merged_tokens_per_char"]) == (round(before, 5), round(after, 5))
    before, after = measured["domain held-out"]
    assert after <= 0.95 * before
    before, after = measured["general"]
    assert after <= before
    assert report["vocab_size"] == {"base": 6400, "merged": 7400}


def test_resized_model_gives_the_same_logits_on_old_tokens(run):
    base_model = AutoModelForCausalLM.from_pretrained(run["base_model"])
    merged_model = AutoModelForCausalLM.from_pretrained(run["out"] / "merged_model")
    assert merged_model.get_input_embeddings().weight.shape[0] >= len(run["merged"])
    batch = run["base"](general_texts(run, 4), add_special_tokens=False, truncation=True, max_length=64,
                        padding=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        before = base_model(**batch).logits[..., : len(run["base"])]
        after = merged_model(**batch).logits[..., : len(run["base"])]
    torch.testing.assert_close(after, before)


def test_new_embeddings_are_the_mean_of_their_base_pieces(run):
    base, merged = run["base"], run["merged"]
    base_model = AutoModelForCausalLM.from_pretrained(run["base_model"])
    merged_model = AutoModelForCausalLM.from_pretrained(run["out"] / "merged_model")
    tied = merged_model.get_output_embeddings().weight is merged_model.get_input_embeddings().weight
    assert tied == base_model.config.tie_word_embeddings
    pairs = [(base_model.get_input_embeddings().weight, merged_model.get_input_embeddings().weight)]
    if not tied:
        pairs.append((base_model.get_output_embeddings().weight, merged_model.get_output_embeddings().weight))
    new_ids = range(len(base), len(merged))
    tokens = merged.convert_ids_to_tokens(list(new_ids))
    pieces = [[p.value for p in base.backend_tokenizer.model.tokenize(token)] for token in tokens]
    assert all(len(p) > 1 and "".join(p) == token for p, token in zip(pieces, tokens))
    pieces = [base.convert_tokens_to_ids(p) for p in pieces]
    for before, after in pairs:
        torch.testing.assert_close(after[: len(base)], before[: len(base)])
        expected = torch.stack([before[ids].mean(0) for ids in pieces])
        torch.testing.assert_close(after[len(base) : len(merged)], expected)


def test_mean_init_sets_new_rows_to_the_mean_of_old_rows(tmp_path):
    options = ["--new_tokens", 50, "--init", "mean"]
    run = extend(tmp_path, TINY_TOKENIZER, REPO / "README.md", CORPUS, 1856, False, *options)
    base_model = AutoModelForCausalLM.from_pretrained(run["base_model"])
    merged_model = AutoModelForCausalLM.from_pretrained(run["out"] / "merged_model")
    n = len(run["base"])
    for layer in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(base_model, layer)().weight, getattr(merged_model, layer)().weight
        torch.testing.assert_close(after[n : n + 50], before[:n].mean(0).expand(50, -1))


def test_extend_vocab_cli_tokenizer_only_overwrites(tmp_path):
    out = tmp_path / "out"
    (out / "merged_model").mkdir(parents=True)  # from an earlier run with --base_model: replaced, not left stale
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    args = ["--base_tokenizer", TINY_TOKENIZER, "--domain_corpus", REPO / "README.md", "--vocab_size", 1900]
    result = run_script("tokenizer/extend_vocab.py", *map(str, args), "--output_dir", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "domain held-out" in result.stdout and "base tok/char" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["fertility.json", "merged_tokenizer", "notes.txt"]
    assert len(AutoTokenizer.from_pretrained(out / "merged_tokenizer")) == 1900
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("slow_tokenizer", "loads as a slow tokenizer (ByT5Tokenizer)"),
        ("vocab_size_not_larger", "--vocab_size 1000 is not larger than the base tokenizer's 1842 tokens"),
        ("empty_corpus", "--domain_corpus: empty corpus"),
        ("one_document", "--domain_corpus has 1 document(s): too few to hold out"),
        ("model_vocab_mismatch", "has 1000 embedding rows but --base_tokenizer"),
        ("output_exists", "already holds merged_tokenizer; pass --overwrite"),
    ],
)
def test_extend_vocab_bad_input(tmp_path, capsys, case, message):
    args = {"--base_tokenizer": TINY_TOKENIZER, "--domain_corpus": REPO / "README.md", "--new_tokens": 10}
    if case == "slow_tokenizer":
        ByT5Tokenizer().save_pretrained(tmp_path / "byt5")
        args["--base_tokenizer"] = tmp_path / "byt5"
    elif case == "vocab_size_not_larger":
        args = {**args, "--new_tokens": None, "--vocab_size": 1000}
    elif case in ("empty_corpus", "one_document"):
        args["--domain_corpus"] = tmp_path / "domain.txt"
        args["--domain_corpus"].write_text("\n \n" if case == "empty_corpus" else "one line\n", encoding="utf-8")
    elif case == "model_vocab_mismatch":
        args["--base_model"] = tiny_model(tmp_path / "model", 1000, True)
    elif case == "output_exists":
        (tmp_path / "out" / "merged_tokenizer").mkdir(parents=True)
        (tmp_path / "out" / "merged_tokenizer" / "mine.txt").write_text("keep me", encoding="utf-8")
    files_before = sorted(tmp_path.rglob("*"))
    flags = [str(part) for flag, value in args.items() if value is not None for part in (flag, value)]
    assert run_main(extend_vocab, *flags, "--output_dir", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == files_before


def test_extend_vocab_failure_writes_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(extend_vocab, "fertility_report", fail)  # after merged_tokenizer/ is written
    with pytest.raises(RuntimeError, match="disk full"):
        extend_vocab.main(["--base_tokenizer", str(TINY_TOKENIZER), "--domain_corpus", str(REPO / "README.md"),
                           "--new_tokens", "10", "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert list(tmp_path.iterdir()) == []
