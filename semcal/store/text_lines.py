"""Text lines from a file or standard input, decoded one by one: an undecodable or over-long
line is an error of its own and the reading goes on (semcal filter's streams)."""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

MAX_LINE_BYTES = 1 << 20  # a longer line is an error record, read past in blocks: memory stays bounded
LONG_LINE = f"longer than {MAX_LINE_BYTES >> 20} MiB"  # the problem of such a line


def iter_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[str, str | None]]:
    """(text, problem) of each line of a text file (or of standard input for "-"), one at a time,
    without line ends. Each line is decoded on its own, so a line that is not valid in `encoding`
    (or longer than MAX_LINE_BYTES) gives ("", what is wrong with it) and the lines after it still come."""
    if str(path) == "-":
        yield from _decoded_lines(_stdin_bytes(), encoding)
        return
    with open(path, "rb") as handle:
        yield from _decoded_lines(_byte_lines(handle), encoding)


def _stdin_bytes() -> Iterator[bytes | None]:
    """Standard input's lines as bytes: decoded here, line by line, not by the interpreter's stdin,
    which would let an undecodable byte through as a surrogate that crashes the output later."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        yield from _byte_lines(buffer)
        return
    for line in sys.stdin:  # a text stream without bytes underneath (tests, notebooks)
        yield line.encode("utf-8", "surrogateescape")


def _byte_lines(handle: Any) -> Iterator[bytes | None]:
    """The lines of a binary handle; None for a line over MAX_LINE_BYTES, whose rest is skipped."""
    while True:
        line = handle.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def _decoded_lines(lines: Iterable[bytes | None], encoding: str) -> Iterator[tuple[str, str | None]]:
    nul_is_binary = codecs.lookup(encoding).name in ("utf-8", "ascii", "latin-1", "iso8859-1", "cp1252")
    for line in lines:
        if line is None:
            yield "", LONG_LINE
            continue
        try:
            text = line.decode(encoding).rstrip("\r\n")
        except UnicodeDecodeError as err:
            yield "", f"not valid {encoding} (byte {line[err.start]:#04x} at byte {err.start + 1} of the line)"
            continue
        if nul_is_binary and "\0" in text:  # valid, but a NUL byte means binary data or UTF-16
            yield "", f"holds a NUL character (at {text.index(chr(0)) + 1}): binary data, or text in UTF-16"
            continue
        yield text, None
