"""Progress bars on stderr (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from catdog.errors import printable

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

# Decided once: while a Ray run filters fd 2 through a pipe, the bars keep drawing on the terminal.
_console = Console(stderr=True, force_terminal=True if sys.stderr.isatty() else None)


@contextmanager
def progress_bar(description: str, total: float | None, unit: str = "items") -> Iterator[Callable[[float], None]]:
    """Show a bar while the block runs; yields `advance(n)`. `unit="bytes"` shows sizes and speed."""
    counter = (DownloadColumn(), TransferSpeedColumn()) if unit == "bytes" else (MofNCompleteColumn(),)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *counter,
        TimeRemainingColumn(),
        console=_console,
        transient=True,
        disable=not _console.is_terminal,
    ) as bar:
        task = bar.add_task(escape(printable(description)), total=total)  # a folder name is neither markup nor escapes
        yield lambda n: bar.advance(task, n)
