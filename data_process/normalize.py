"""Text normalisation (HTML, control characters, Unicode form, Chinese punctuation width, whitespace) and PII redaction."""

from __future__ import annotations

import html
import unicodedata
from collections import Counter

import regex

from data_process.settings import NormalizeArgs

HTML_DROPPED = regex.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", regex.S | regex.I)
HTML_BREAKS = regex.compile(r"<(?:br|/p|/div|/li|/h[1-6]|/tr|/blockquote)\b[^<>]*>", regex.I)
HTML_TAGS = regex.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>")
# C0/C1 controls except tab, newline and CR (a line ending, handled with whitespace), plus invisible format
# characters: soft hyphen, zero-width space, LTR/RTL marks, word joiner, BOM. Zero-width (non-)joiners stay:
# emoji sequences and Indic scripts need them.
CONTROL = regex.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u2060\ufeff]")
# Punctuation right after a Chinese/Japanese character or CJK punctuation is written full-width in that text.
CJK_CONTEXT = r"[\p{Han}\p{Hiragana}\p{Katakana}。、「」『』《》〈〉【】“”‘’…]"
CJK_PUNCTUATION = regex.compile(rf"(?<={CJK_CONTEXT})[,!?:;]")
FULLWIDTH = str.maketrans(",!?:;", "，！？：；")
SPACES = regex.compile(r"[^\S\n\t]")  # any whitespace but newline and tab: NBSP, ideographic space, \f, \v
INNER_RUNS = regex.compile(r"(?<=\S) {2,}")  # runs after text; leading indentation is kept
TRAILING = regex.compile(r"[ \t]+$", regex.M)
BLANK_LINES = regex.compile(r"\n{3,}")

EMAIL = regex.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Mainland China resident ID: region (6), birth date (8), sequence (3), check digit or X; validated by checksum.
ID_CARD = regex.compile(
    r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])"
)
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"
PHONE = regex.compile(
    r"""(?<![0-9A-Za-z+])(?:
        (?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}             # Chinese mobile: 138 1234 5678, +86 13812345678
      | 0\d{2,3}-\d{7,8}                                      # Chinese landline: 010-12345678
      | \+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}     # international: +44 20 7946 0958
      | \(\d{3}\)[ ]?\d{3}[ .-]\d{4}                          # North American: (555) 123-4567
      | \d{3}[.-]\d{3}[.-]\d{4}                               # 555-123-4567
    )(?![0-9A-Za-z])""",
    regex.X,
)
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "id_card": "<ID_CARD>"}


class Normalizer:
    """Applies the configured normalisation steps to one text."""

    def __init__(self, args: NormalizeArgs):
        self.args = args

    def __call__(self, text: str) -> str:
        if self.args.strip_html:
            text = strip_html(text)
        if self.args.control_chars:
            text = CONTROL.sub("", text)
        if self.args.unicode != "none":
            text = unicodedata.normalize(self.args.unicode, text)
        if self.args.cjk_punctuation == "fullwidth":
            text = CJK_PUNCTUATION.sub(lambda match: match[0].translate(FULLWIDTH), text)
        if self.args.whitespace:
            text = tidy_whitespace(text)
        return text


def strip_html(text: str) -> str:
    """Text without tags, comments, scripts and styles; block ends become newlines, entities are unescaped."""
    text = HTML_DROPPED.sub("", text)
    text = HTML_BREAKS.sub("\n", text)
    return html.unescape(HTML_TAGS.sub("", text))


def tidy_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = SPACES.sub(" ", text)
    text = INNER_RUNS.sub(" ", text)
    text = TRAILING.sub("", text)
    return BLANK_LINES.sub("\n\n", text).lstrip("\n").rstrip()  # the first line keeps its indentation


class PiiRedactor:
    """Replaces emails, phone numbers and ID-card numbers by placeholders, counting each kind."""

    def __init__(self, kinds: list[str]):
        self.kinds = kinds
        self.counts: Counter = Counter()

    def __call__(self, text: str) -> str:
        # ID numbers first: their 18 digits would otherwise look like a phone number inside a longer number.
        if "id_card" in self.kinds:
            text = ID_CARD.sub(self._id_card, text)
        for kind, pattern in (("email", EMAIL), ("phone", PHONE)):
            if kind in self.kinds:
                text, found = pattern.subn(PLACEHOLDERS[kind], text)
                if found:
                    self.counts[kind] += found
        return text

    def _id_card(self, match: regex.Match) -> str:
        number = match[0].upper()
        if ID_CHECK[sum(int(d) * w for d, w in zip(number, ID_WEIGHTS)) % 11] != number[-1]:
            return match[0]  # a number of the right shape whose check digit is wrong is not an ID number
        self.counts["id_card"] += 1
        return PLACEHOLDERS["id_card"]
