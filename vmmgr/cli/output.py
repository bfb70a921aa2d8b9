"""Rendering for the CLI: aligned tables by default, JSON with -o json."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def to_dict(msg: Message) -> dict[str, Any]:
    return MessageToDict(msg, preserving_proto_field_name=True)


def print_json(
    obj: Message | Sequence[Message] | dict[str, Any], out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    if isinstance(obj, Message):
        data: Any = to_dict(obj)
    elif isinstance(obj, dict):
        data = obj
    else:
        data = [to_dict(m) for m in obj]
    json.dump(data, out, indent=2, sort_keys=True)
    out.write("\n")


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None
) -> None:
    out = out or sys.stdout
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        out.write(line + "\n")
        if n == 0 and not rows:
            break


def print_kv(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        out.write(f"{key.ljust(width)}  {value}\n")


def enum_name(value: str, prefix: str) -> str:
    """'VM_STATE_RUNNING' -> 'running'."""
    return value.removeprefix(prefix).lower() if value.startswith(prefix) else value.lower()


class ProgressBar:
    """A one-line progress bar on stderr while an Operation runs (only on a terminal)."""

    def __init__(self, out: TextIO | None = None, width: int = 30) -> None:
        self.out = out or sys.stderr
        self.width = width
        self.tty = self.out.isatty()
        self.last = ""

    def update(self, percent: float, message: str) -> None:
        filled = int(self.width * max(0.0, min(percent, 100.0)) / 100)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {percent:5.1f}% {message}"[:120]
        if self.tty:
            self.out.write("\r" + line.ljust(len(self.last)))
            self.out.flush()
        elif message != self.last:
            self.out.write(line + "\n")
        self.last = line if self.tty else message

    def close(self) -> None:
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()
