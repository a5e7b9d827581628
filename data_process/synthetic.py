"""Synthetic Chinese/English documents with planted exact and near duplicates, for the tests and the benchmark.

Words follow a Zipf distribution over a made-up English vocabulary and common-range Chinese characters, so
unrelated documents share frequent words as real text does. A near copy has about `edit_share` of its
characters substituted, inserted or deleted at random positions.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "an", "en", "in", "on"]
JUNK = ("{}!!! $$$ ### 100% @@@ ***", "buy now {} click here ")  # symbol soup; a repeated spam phrase


@dataclass
class PlantedDoc:
    text: str
    language: str  # en, zh, mixed, junk
    copy: str = ""  # "", "exact" or "near"
    copy_of: int = -1  # index of the original for copies


class TextMaker:
    """Seeded random documents and edits."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        vocab_rng = random.Random(1234)  # the same vocabulary for every seed
        self.words = ["".join(vocab_rng.choices(SYLLABLES, k=vocab_rng.randint(1, 3))) for _ in range(6000)]
        self.word_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(self.words))))
        self.chars = [chr(0x4E00 + i) for i in vocab_rng.sample(range(0x51A5), 3500)]
        self.char_weights = list(itertools.accumulate(1 / (rank + 1) ** 0.8 for rank in range(len(self.chars))))

    def english(self, words: int) -> str:
        sentences, left = [], words
        while left > 0:
            n = min(left, self.rng.randint(6, 18))
            sentence = " ".join(self.rng.choices(self.words, cum_weights=self.word_weights, k=n))
            sentences.append(sentence[0].upper() + sentence[1:] + self.rng.choice(".....?!"))
            left -= n
        return " ".join(sentences)

    def chinese(self, chars: int) -> str:
        sentences, left = [], chars
        while left > 0:
            n = min(left, self.rng.randint(8, 30))
            sentence = "".join(self.rng.choices(self.chars, cum_weights=self.char_weights, k=n))
            sentences.append(sentence + self.rng.choice("。。。，！？"))
            left -= n
        return "".join(sentences)

    def document(self, language: str) -> str:
        if language == "en":
            return self.english(self.rng.randint(60, 250))
        if language == "zh":
            return self.chinese(self.rng.randint(150, 700))
        if language == "mixed":
            return self.chinese(self.rng.randint(80, 300)) + " " + self.english(self.rng.randint(30, 120))
        return self.rng.choice(JUNK).format(self.english(3)) * self.rng.randint(10, 40)

    def edit(self, text: str, share: float) -> str:
        """`text` with about share × len(text) single-character substitutions, insertions and deletions."""
        chars = list(text)
        for _ in range(max(1, round(len(chars) * share))):
            at = self.rng.randrange(len(chars))
            pool = self.chars if "\u4e00" <= chars[at] <= "\u9fff" else "abcdefghijklmnopqrstuvwxyz"
            operation = self.rng.random()
            if operation < 1 / 3:
                chars[at] = self.rng.choice(pool)
            elif operation < 2 / 3:
                chars.insert(at, self.rng.choice(pool))
            elif len(chars) > 1:
                del chars[at]
        return "".join(chars)


def planted_corpus(count: int, seed: int, exact_share: float = 0.05, near_share: float = 0.05,
                   junk_share: float = 0.0, edit_share: float = 0.05) -> list[PlantedDoc]:
    """`count` documents; each copy comes after its original (an earlier original, chosen at random)."""
    maker = TextMaker(seed)
    docs: list[PlantedDoc] = []
    originals: list[int] = []
    for _ in range(count):
        draw = maker.rng.random()
        if originals and draw < exact_share + near_share:
            source = maker.rng.choice(originals)
            if draw < exact_share:
                docs.append(PlantedDoc(docs[source].text, docs[source].language, "exact", source))
            else:
                docs.append(PlantedDoc(maker.edit(docs[source].text, edit_share), docs[source].language, "near", source))
        elif draw < exact_share + near_share + junk_share:
            docs.append(PlantedDoc(maker.document("junk"), "junk"))
        else:
            originals.append(len(docs))
            language = maker.rng.choices(("en", "zh", "mixed"), (0.45, 0.45, 0.1))[0]
            docs.append(PlantedDoc(maker.document(language), language))
    return docs
