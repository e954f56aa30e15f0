"""Progress bars that read cleanly in a terminal, a notebook and a log file, and messages that
never land inside a bar's line."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def _interactive(stream: Any) -> bool:
    """A terminal or a Jupyter kernel's output (both redraw a line); not a file or a pipe."""
    if type(stream).__module__.startswith("ipykernel"):
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, shown only where the line can be redrawn: in a log file each redraw
    would append to one endless line, and the metric lines already report progress there."""
    enabled = kwargs.pop("enabled", True)
    return tqdm(iterable, file=sys.stderr, disable=not (enabled and _interactive(sys.stderr)), **kwargs)


def message(text: str) -> None:
    """Prints a line on stdout; a bar being drawn is cleared first and redrawn below it."""
    tqdm.write(text, file=sys.stdout)
