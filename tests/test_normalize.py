"""Text normalisation steps and PII redaction, each on text it must change and text it must leave alone."""

from __future__ import annotations

import pytest

from data_process.normalize import Normalizer, PiiRedactor
from data_process.settings import NormalizeArgs

ONLY = {"unicode": "none", "cjk_punctuation": "halfwidth", "whitespace": False, "control_chars": False, "strip_html": False}
FULLWIDTH = {"unicode": "NFKC", "cjk_punctuation": "fullwidth"}


def normalize(text: str, **step) -> str:
    return Normalizer(NormalizeArgs(**{**ONLY, **step}))(text)


@pytest.mark.parametrize(
    "step, before, after",
    [
        ({"unicode": "NFKC"}, "ＡＢＣ１２３ ﬁne①", "ABC123 fine1"),
        (FULLWIDTH, "你好，世界！Hello，world！", "你好，世界！Hello,world!"),
        (FULLWIDTH, "你好,世界!他说:“好”,然后", "你好，世界！他说：“好”，然后"),
        ({"unicode": "NFKC", "cjk_punctuation": "halfwidth"}, "你好，世界！", "你好,世界!"),
        (FULLWIDTH, "版本3.0,见 a.txt; ok", "版本3.0,见 a.txt; ok"),
        ({"whitespace": True}, "a\u3000b\u00a0c   d  \r\nline\t \n\n\n\nend  ", "a b c d\nline\n\nend"),
        ({"whitespace": True}, "\n\ndef f():\n    return  1\n", "def f():\n    return 1"),
        ({"control_chars": True}, "a\x00b\x1bc\u200bd\ufeffe\u00adf\tg\nh", "abcdef\tg\nh"),
        ({"strip_html": True}, "<p>Fish &amp; chips</p><script>x()</script><!-- note --><br/>end", "Fish & chips\n\nend"),
        ({"strip_html": True}, "if a < b and b > c: pass", "if a < b and b > c: pass"),
    ],
    ids=["nfkc", "fullwidth-kept-in-chinese", "halfwidth-made-fullwidth", "halfwidth", "no-chinese-context",
         "whitespace", "indentation-kept", "control-chars", "html", "not-html"],
)
def test_normalisation_steps(step, before, after):
    assert normalize(before, **step) == after


def test_defaults_are_idempotent():
    normalizer = Normalizer(NormalizeArgs(strip_html=True))
    text = "<b>ＡＩ</b>  模型，很好!  \r\n\n\n\nNext\u200b line"
    once = normalizer(text)
    assert once == "AI 模型，很好！\n\nNext line"
    assert normalizer(once) == once


@pytest.mark.parametrize(
    "text, redacted, kind",
    [
        ("mail john.doe+x@mail.example.com now", "mail <EMAIL> now", "email"),
        ("手机13812345678，座机010-12345678", "手机<PHONE>，座机<PHONE>", "phone"),
        ("call +44 20 7946 0958 or (555) 123-4567", "call <PHONE> or <PHONE>", "phone"),
        ("身份证 11010519491231002X 已登记", "身份证 <ID_CARD> 已登记", "id_card"),
    ],
)
def test_pii_is_replaced_and_counted(text, redacted, kind):
    redactor = PiiRedactor(["email", "phone", "id_card"])
    assert redactor(text) == redacted
    assert redactor.counts[kind] == redacted.count("<")


@pytest.mark.parametrize(
    "text",
    ["bad checksum 110105194912310021", "order 20231001123456789", "on 2023-10-01 at 10:30, pi 3.14159", "user@localhost"],
)
def test_pii_leaves_lookalikes_alone(text):
    redactor = PiiRedactor(["email", "phone", "id_card"])
    assert redactor(text) == text and not redactor.counts


def test_pii_only_the_kinds_asked_for():
    assert PiiRedactor(["email"])("a@b.co 13812345678") == "<EMAIL> 13812345678"
