import pytest

from tracker.domain.text import clean_optional, clean_text, dirt_in


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain", "plain"),
        ("a\x00b\x00", "ab"),
        ("é\x00", "é"),
        ("x\ud800y", "x\ufffdy"),
        ("Mozilla\udcff\udcfe", "Mozilla\ufffd\ufffd"),  # raw header bytes, surrogate-escaped
        ("\U0001f600", "\U0001f600"),
        ("", ""),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
    clean_text(raw).encode("utf-8")


def test_clean_optional():
    assert clean_optional(None) is None
    assert clean_optional("a\x00") == "a"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("abc", None),
        ("ünïcode", None),
        ("a\x00", "contains a NUL character"),
        ("\ufffd", "is not valid UTF-8 text"),
        ("\udcff", "is not valid UTF-8 text"),
    ],
)
def test_dirt_in(raw, reason):
    assert dirt_in(raw) == reason
