"""The one reader of every table a user hands headprune (datasets, `predict`'s input): CSV, TSV,
JSONL or plain lines, decoded leniently, each mistake one error line naming the file, the line and
the column.

It says where a mistake is as an editor counts: "line N" is the N-th line of the file, 1-based, the
header of a CSV/TSV being line 1, whatever quoted newlines or blank lines came before."""

from __future__ import annotations

import csv
import io
import json
import re

from .errors import HeadpruneError

_UNDECODED = re.compile("[\udc80-\udcff]")  # what `decode` turns an undecodable byte into
_DELIMITERS = {"csv": ",", "tsv": "\t"}


def decode(raw: bytes) -> str:
    """The text of a file's bytes as UTF-8 (a byte-order mark dropped). Bytes that are not UTF-8
    are kept as lone surrogates, so that the readers can say on which line and in which column
    they are instead of failing on the whole file."""
    return raw.decode("utf-8-sig", errors="surrogateescape")


def file_lines(text: str) -> list[str]:
    """The lines of `text` as an editor and the csv module count them (\\n, \\r\\n or \\r), ends kept.
    Unlike `str.splitlines`, a tweet's U+2028 or U+0085 does not start a new line."""
    return io.StringIO(text, newline="").readlines()


def read_lines(text: str, source: str) -> list[tuple[int, str]]:
    """The non-blank lines of plain text, [(line number, line)], one text per line."""
    lines = file_lines(text)
    bad = _undecodable_lines(lines)
    if bad:
        raise _not_utf8(source, bad, None)
    return [(n, line.rstrip("\r\n")) for n, line in enumerate(lines, start=1) if line.strip()]


def read_rows(
    text: str, source: str, fmt: str, columns: dict[str, str], scalars: tuple[str, ...] = ()
) -> list[tuple[int, list[str]]]:
    """The values of `columns` ({column: the option that named it}) in every row of a CSV, TSV or
    JSONL text (from `decode`): [(line where the row starts, [values in the order of columns])].

    Blank lines are skipped. A row with more or fewer fields than the header, a missing or repeated
    column, a line that is not a JSON object, a value of the wrong type, a byte that is not UTF-8,
    a quote never closed: one `HeadpruneError` naming `source`, the line and the column. In JSONL a
    value must be a string (null reads as empty), except in the `scalars` columns (labels such as
    0/1 or true/false), where numbers and booleans are read as Python writes them."""
    lines = file_lines(text)
    bad = _undecodable_lines(lines)
    if fmt == "jsonl":
        return _json_rows(lines, bad, source, columns, scalars)
    if fmt not in _DELIMITERS:
        raise ValueError(f"unknown table format {fmt!r}")
    return _delimited_rows(lines, bad, source, _DELIMITERS[fmt], columns)


def _undecodable_lines(lines: list[str]) -> list[int]:
    return [n for n, line in enumerate(lines, start=1) if _UNDECODED.search(line)]


def _not_utf8(source: str, bad: list[int], part: str | None) -> HeadpruneError:
    """`part`: where on the first bad line the byte is ("column 'tweet'", "the header"), if known."""
    where = f"line {bad[0]}" + (f" ({part})" if part else "")
    return HeadpruneError(
        f"{source}: {len(bad)} line(s) are not valid UTF-8, the first is {where}; re-save the file as UTF-8"
    )


def _listing(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + f", ... ({len(names)} in all)"


def _positions(header: list[str], source: str, columns: dict[str, str], line: int) -> list[int]:
    positions = []
    for column, option in columns.items():
        found = [i for i, name in enumerate(header) if name == column]
        if not found:
            raise HeadpruneError(f"{source}: no column '{column}' ({option}); the columns are: {', '.join(header)}")
        if len(found) > 1:
            raise HeadpruneError(
                f"{source}: column '{column}' appears {len(found)} times in the header (line {line}, "
                f"fields {', '.join(str(i + 1) for i in found)}); rename all but one"
            )
        positions.append(found[0])
    return positions


def _delimited_rows(
    lines: list[str], bad: list[int], source: str, delimiter: str, columns: dict[str, str]
) -> list[tuple[int, list[str]]]:
    reader = csv.reader(iter(lines), delimiter=delimiter)
    header: list[str] = []
    header_line = 0
    positions: list[int] = []
    rows: list[tuple[int, list[str]]] = []
    first = last = 0
    final: tuple[int, int] | None = None  # the lines of the last row read (the header included)
    try:
        for fields in reader:
            first, last = last + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            final = (first, last)
            if bad and bad[0] <= last:
                at = next((i for i, value in enumerate(fields) if _UNDECODED.search(value)), len(fields))
                part = "the header" if not header else (f"column '{header[at]}'" if at < len(header) else None)
                raise _not_utf8(source, bad, part)
            if not header:
                header, header_line = fields, first
                positions = _positions(header, source, columns, header_line)
                continue
            if len(fields) != len(header):
                raise _field_count(source, first, last, len(fields), header, header_line, delimiter)
            rows.append((first, [fields[i] for i in positions]))
    except csv.Error as err:
        start = last + 1  # the row being read began after the last one read whole
        where = f"line {start}" if start >= reader.line_num else f"lines {start}-{reader.line_num}"
        hint = "; is a '\"' unmatched?" if "field larger" in str(err) else ""
        raise HeadpruneError(f"{source}: {where}: cannot parse ({err}){hint}") from None
    if final is not None:
        _check_closed(source, lines[final[0] - 1 : final[1]], *final, delimiter)
    return rows


def _field_count(
    source: str, first: int, last: int, n_fields: int, header: list[str], header_line: int, delimiter: str
) -> HeadpruneError:
    where = f"line {first}" if first == last else (
        f"lines {first}-{last} (one row: a quoted value runs over them; is a '\"' unmatched?)"
    )
    heading = f"the header (line {header_line}) has {len(header)}: {_listing(header)}"
    if n_fields > len(header):
        inside = "a tab" if delimiter == "\t" else f"'{delimiter}'"
        return HeadpruneError(
            f"{source}: {where} has {n_fields} fields, {heading}; a value that contains {inside} must be in "
            "double quotes"
        )
    missing = header[n_fields:]
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    return HeadpruneError(
        f"{source}: {where} has {n_fields} field(s), {heading}: no value for column '{missing[0]}'{more}"
    )


def _check_closed(source: str, record: list[str], first: int, last: int, delimiter: str) -> None:
    """The csv module reads a quote left open at the end of the file as a value running to the end;
    its strict mode is the only thing that notices, so the file's last row is read again strictly."""
    try:
        list(csv.reader(iter(record), delimiter=delimiter, strict=True))
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise HeadpruneError(
                f"{source}: line {first}: a '\"' opens a quoted value that is never closed (it runs to the end "
                f"of the file, line {last})"
            ) from None


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        return f"a number ({json.dumps(value)})"
    return {list: "a list", dict: "an object", str: "a string"}.get(type(value), type(value).__name__)


def _json_rows(
    lines: list[str], bad: list[int], source: str, columns: dict[str, str], scalars: tuple[str, ...]
) -> list[tuple[int, list[str]]]:
    records: list[tuple[int, dict]] = []
    for n, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")  # so that a JSON error's character counts on this line
        if not line.strip():
            continue
        if bad and bad[0] == n:
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                parsed = None
            keys = [k for k, v in parsed.items() if _UNDECODED.search(str(v))] if isinstance(parsed, dict) else []
            raise _not_utf8(source, bad, f"column '{keys[0]}'" if keys else None)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise HeadpruneError(
                f"{source}: line {n} is not valid JSON ({err.msg}, at character {err.colno})"
            ) from None
        if not isinstance(record, dict):
            raise HeadpruneError(
                f"{source}: line {n} is {_json_kind(record)}, not a JSON object with the keys "
                f"{', '.join(repr(c) for c in columns)} (JSON lines: one object per line)"
            )
        records.append((n, record))
    seen = list(dict.fromkeys(key for _, record in records for key in record))
    for column, option in columns.items():
        if column not in seen:
            raise HeadpruneError(f"{source}: no column '{column}' ({option}); the columns are: {', '.join(seen)}")
    rows = []
    for n, record in records:
        values = []
        for column, option in columns.items():
            if column not in record:
                raise HeadpruneError(
                    f"{source}: line {n} has no '{column}' ({option}); its keys are: {', '.join(record)}"
                )
            value = record[column]
            if value is None:
                value = ""
            elif not isinstance(value, str):
                allowed = isinstance(value, (bool, int, float)) and column in scalars
                if not allowed:
                    expected = "a string, a number or a boolean" if column in scalars else "a string"
                    raise HeadpruneError(
                        f"{source}: line {n}, column '{column}': expected {expected}, got {_json_kind(value)}"
                    )
                value = str(value)
            values.append(value)
        rows.append((n, values))
    return rows


__all__ = ["decode", "file_lines", "read_lines", "read_rows"]
