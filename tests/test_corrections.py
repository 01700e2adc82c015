"""Reading a corrections CSV: the header, blank rows, line numbers and row errors."""

import pytest

from tracker.domain.corrections import CsvRefused, TooManyRows, read_corrections


def read(text: str | bytes, max_rows: int = 100) -> list[tuple[int, dict[str, str], str | None]]:
    data = text.encode() if isinstance(text, str) else text
    return [(row.line, row.params, row.error) for row in read_corrections(data, max_rows)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("clickid\nabc\n", [(2, {"clickid": "abc"}, None)]),
        (" ClickID , TXID \n abc , t1 \n", [(2, {"clickid": "abc", "txid": "t1"}, None)]),
        ("\ufeffclickid,payout\r\nabc,\r\n", [(2, {"clickid": "abc"}, None)]),
        ("clickid,txid\n\n,\nabc,t\n", [(4, {"clickid": "abc", "txid": "t"}, None)]),
        (
            'clickid,txid\n"a\nb",t\nc,u\n',
            [
                (2, {"clickid": "a\nb", "txid": "t"}, None),
                (4, {"clickid": "c", "txid": "u"}, None),
            ],
        ),
        ("clickid,txid\nabc\n", [(2, {"clickid": "abc"}, "1 cells where the header has 2")]),
        ("clickid\na\x00\n", [(2, {"clickid": "a\x00"}, "clickid contains a NUL character")]),
        ("clickid\rabc\r", [(2, {"clickid": "abc"}, None)]),
    ],
)
def test_rows(text, expected):
    assert read(text) == expected


def test_invalid_utf8_fails_the_row_only():
    rows = read(b"clickid,txid\na,\xe9\nb,ok\n")
    assert rows[0][2] == "txid is not valid UTF-8 text"
    assert rows[1] == (3, {"clickid": "b", "txid": "ok"}, None)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("abc,T-1\n", "no header"),
        ("txid\nT-1\n", "missing column 'clickid'"),
        ("clickid,,txid\n", "column 2 has no name"),
        ("clickid,sub1\n", "unknown columns 'sub1'"),
        ("clickid,ClickId\n", "columns named twice: 'clickid'"),
        ('clickid\n"abc\n', "line 2: unreadable CSV"),
        ('clickid\n"a"b\n', "line 2: unreadable CSV"),
        ("click\x00id\n", "the header contains a NUL"),
    ],
)
def test_refused_files(text, words):
    with pytest.raises(CsvRefused, match=words):
        read(text)


def test_too_many_rows():
    assert len(read("clickid\na\nb\n", max_rows=2)) == 2
    with pytest.raises(TooManyRows, match="more than 2 rows"):
        read("clickid\na\nb\nc\n", max_rows=2)
