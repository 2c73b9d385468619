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


@contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Run the block with fd 2 captured, then pass on what native and Python code wrote there, less the
    library log lines (everything, in verbose mode)."""
    if is_verbose():
        yield
        return
    with _fd2:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            yield
            return
        with tempfile.TemporaryFile() as capture:
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
