"""Reading a corrections CSV (`clickid,txid,payout,status,currency`) into rows to apply.

The file is refused whole only when it cannot be read as a table: no header, a wrong
header, broken quoting or too many rows. Anything wrong inside one row (invalid UTF-8,
a NUL, a wrong number of cells) is that row's own error; its values are judged later,
as a postback's would be.
"""

import csv
import io
from collections import Counter
from dataclasses import dataclass

from tracker.domain.text import dirt_in

COLUMNS = ("clickid", "txid", "payout", "status", "currency")
REQUIRED = "clickid"
_BOM = b"\xef\xbb\xbf"
_HEADER_HINT = "the first line must name the columns: " + ",".join(COLUMNS)


class CsvRefused(ValueError):
    """The whole file is refused; nothing in it may be applied."""


class TooManyRows(CsvRefused):
    pass


@dataclass(frozen=True, slots=True)
class CsvRow:
    line: int  # the line the row starts on; the header is line 1
    params: dict[str, str]  # the non-empty cells, by column
    text: str  # the row as CSV, for the postback log
    error: str | None = None  # why the row cannot be applied, found while reading it


def read_corrections(data: bytes, max_rows: int) -> list[CsvRow]:
    """The data rows of a corrections CSV (UTF-8, with or without a BOM, any line
    endings), blank rows skipped. Raises CsvRefused, or TooManyRows beyond `max_rows`."""
    # Bytes that are not UTF-8 become lone surrogates, caught per row by `dirt_in`.
    text = data.removeprefix(_BOM).decode("utf-8", "surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[CsvRow] = []
    end = 0  # the last line read so far
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = _header(cells)
                continue
            if len(rows) == max_rows:
                raise TooManyRows(f"more than {max_rows} rows")
            rows.append(_row(start, header, cells))
    except csv.Error as exc:
        raise CsvRefused(f"line {end + 1}: unreadable CSV ({exc})") from None
    if header is None:
        raise CsvRefused(f"empty file: {_HEADER_HINT}")
    return rows


def _header(cells: list[str]) -> list[str]:
    names = [cell.strip().lower() for cell in cells]
    for name in names:
        if dirt_in(name) is not None:
            raise CsvRefused(f"the header {dirt_in(name)}")
    if REQUIRED not in names:
        if not set(names) & set(COLUMNS):
            raise CsvRefused(f"no header: {_HEADER_HINT}")
        raise CsvRefused(f"missing column {REQUIRED!r}: {_HEADER_HINT}")
    # A misspelt column would silently fall back to the offer's payout or currency.
    unknown = [name or f"(column {i} has no name)" for i, name in enumerate(names, 1)]
    unknown = [u for u, name in zip(unknown, names, strict=True) if name not in COLUMNS]
    if unknown:
        raise CsvRefused(f"unknown columns {', '.join(map(repr, unknown))}: {_HEADER_HINT}")
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise CsvRefused(f"columns named twice: {', '.join(map(repr, repeated))}")
    return names


def _row(line: int, header: list[str], cells: list[str]) -> CsvRow:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    text = buffer.getvalue()
    given = {name: cell.strip() for name, cell in zip(header, cells, strict=False)}
    params = {name: value for name, value in given.items() if value}
    if len(cells) != len(header):
        error = f"{len(cells)} cells where the header has {len(header)}"
        return CsvRow(line, params, text, error)
    for name, value in params.items():
        dirt = dirt_in(value)
        if dirt is not None:
            return CsvRow(line, params, text, f"{name} {dirt}")
    return CsvRow(line, params, text)
