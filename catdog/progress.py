"""Progress bars on stderr (rich), silent when stderr is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

_console = Console(stderr=True)


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
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
