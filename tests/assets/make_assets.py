"""Write the small offline fixtures in tests/assets/formats/: one file in each input shape the data code accepts,
made from the demo's generators so that tests of formats run in a fresh clone without ../shared.

    uv run python tests/assets/make_assets.py    # the same files every time

Shapes (as the public sets ship them): Alpaca rows with `history` (JSON list), ShareGPT conversations with a system
turn, ShareGPT preference rows with chosen/rejected messages, KTO rows (`messages` + `label`), C4-style text rows
(JSONL), a plain-text file of documents separated by blank lines, and GSM8K rows whose answer ends in `#### N`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from data_process.make_sample_data import arithmetic, capital, corpus_sentences, make_rows, word_task

OUT = Path(__file__).resolve().parent / "formats"
ROWS = 24


def alpaca(rng: random.Random) -> list[dict]:
    rows = []
    for index in range(ROWS):
        _, question, answer = rng.choice([arithmetic, word_task, capital])(rng)
        history = [[q, a] for _, q, a in (arithmetic(rng) for _ in range(index % 3))]
        extra = "Answer briefly." if index % 2 else ""
        rows.append({"instruction": question, "input": extra, "output": answer, "history": history})
    return rows


def sharegpt(rng: random.Random) -> list[dict]:
    rows = []
    for row in make_rows(rng, ROWS, avoid=set())[0]:
        turns = [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
                 for m in row["messages"] if m["role"] != "system"]
        system = next((m["content"] for m in row["messages"] if m["role"] == "system"), "")
        rows.append({"conversations": turns, "system": system})
    return rows


def dpo_sharegpt(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        task = rng.choice([arithmetic, word_task, capital])
        state = rng.getstate()
        _, question, chosen = task(rng)
        rng.setstate(state)
        _, _, rejected = task(rng, wrong=True)
        rows.append({"conversations": [{"from": "human", "value": question}],
                     "chosen": {"from": "gpt", "value": chosen}, "rejected": {"from": "gpt", "value": rejected}})
    return rows


def kto(rng: random.Random) -> list[dict]:
    rows = []
    for index in range(ROWS):
        _, question, answer = arithmetic(rng, wrong=index % 2 == 1)
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                     "label": index % 2 == 0})
    return rows


def text_rows(rng: random.Random) -> list[dict]:
    return [{"text": " ".join(corpus_sentences(rng, rng.randint(3, 8))), "timestamp": "2026-01-01T00:00:00Z",
             "url": f"https://example.com/{index}"} for index in range(ROWS)]


def documents(rng: random.Random) -> str:
    return "\n\n".join("\n".join(corpus_sentences(rng, rng.randint(1, 4))) for _ in range(ROWS)) + "\n"


def gsm8k(rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(ROWS):
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(1000, 3000)
        question = f"A shop sells {a} boxes of {b} pens and {c} single pens. How many pens does it sell?"
        answer = f"The boxes hold {a} * {b} = <<{a}*{b}={a * b}>>{a * b} pens.\nIn all {a * b} + {c} = {a * b + c:,}.\n#### {a * b + c:,}"
        rows.append({"question": question, "answer": answer})
    return rows


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name, rows in (("alpaca.json", alpaca(rng)), ("sharegpt.json", sharegpt(rng)), ("dpo_sharegpt.json", dpo_sharegpt(rng)),
                       ("kto.json", kto(rng))):
        (OUT / name).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    for name, rows in (("text.jsonl", text_rows(rng)), ("gsm8k.jsonl", gsm8k(rng))):
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    (OUT / "documents.txt").write_text(documents(rng), encoding="utf-8")
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()
