"""Library log noise: TensorFlow's, absl's and LiteRT's own log lines stay out of catdog's output.

Quiet unless `catdog --verbose` or CATDOG_LOG_LEVEL=debug. TF_CPP_MIN_LOG_LEVEL only takes effect when set
before TensorFlow loads, and some native lines ignore it (absl's "All log messages before
absl::InitializeLog()", "Could not find cuda drivers" while TensorFlow loads; LiteRT's "Created TensorFlow
Lite XNNPACK delegate"), so those moments run with file descriptor 2 captured and only the lines that are
not library log lines are passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "CATDOG_LOG_LEVEL"
# absl / TSL native lines ("I0000 00:00:1796123096.707039    5504 cudart_stub.cc:31] ...") and the two
# fixed lines that no log level hides.
NOISE = re.compile(
    r"[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate"
    # Ray's C++ core ("[2026-12-01 11:53:15,949 E 407 407] core_worker.cc:2465: ...")
    r"|\[\d{4}-\d\d-\d\d [\d:,.]+ [IWEF] \d+ \d+\] \S+:\d+: "
)
_fd2 = threading.RLock()  # one redirect of the process-wide fd 2 at a time


def is_verbose() -> bool:
    return os.environ.get(ENV, "").strip().lower() == "debug"


def configure(verbose: bool = False) -> None:
    """Set the libraries' log levels for this process and the commands it starts (before TensorFlow loads)."""
    if verbose:
        os.environ[ENV] = "debug"
    # 3 hides TensorFlow's errors too ("failed call to cuInit" on a machine without a GPU); the ones that
    # matter reach catdog as Python exceptions.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if is_verbose() else "3"


def _capture_file():
    """An anonymous file in memory (memfd): works in a container whose /tmp is read-only or missing."""
    try:
        return os.fdopen(os.memfd_create("catdog-stderr"), "w+b")
    except (AttributeError, OSError):
        return tempfile.TemporaryFile()


@contextmanager
def _stderr_saved() -> Iterator[int | None]:
    """Under the fd-2 lock, a duplicate of fd 2 for the caller to restore; None when there is nothing to
    filter (verbose mode, or no stderr at all)."""
    if is_verbose():
        yield None
        return
    with _fd2:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:
            yield None
            return
        yield saved


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Run the block with fd 2 captured, then pass on what native and Python code wrote there, less the
    library log lines (everything, in verbose mode)."""
    with _stderr_saved() as saved:
        if saved is None:
            yield
            return
        with _capture_file() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                kept = "".join(line for line in lines if not NOISE.match(line))
                if kept:
                    sys.stderr.write(kept)
                    sys.stderr.flush()


@contextmanager
def native_stderr_filtered_live() -> Iterator[None]:
    """Like `native_stderr_filtered`, for long blocks that draw progress bars: fd 2 goes through a pipe and a
    thread passes everything on as it comes, less whole library log lines (Ray's native core writes some)."""
    with _stderr_saved() as saved:
        if saved is None:
            yield
            return
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)

        def pump() -> None:
            pending = b""
            while chunk := os.read(read_end, 65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not NOISE.match(line.decode("utf-8", "replace")))
                if pending and not pending.startswith(b"["):  # a bar redrawn without a newline: pass it on now
                    out, pending = out + pending, b""
                if out:
                    os.write(saved, out)
            if pending and not NOISE.match(pending.decode("utf-8", "replace")):
                os.write(saved, pending)

        thread = threading.Thread(target=pump, name="catdog-stderr", daemon=True)
        thread.start()
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            # A process started in the block (a local Ray cluster) may still hold the pipe: wait a little, and
            # if the pump still runs, leave it its two descriptors rather than close them under it.
            thread.join(timeout=2)
            if not thread.is_alive():
                os.close(read_end)
                os.close(saved)
