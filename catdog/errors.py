"""The one exception type that reaches the user as a one-line message."""


class CatdogError(Exception):
    """An expected failure: bad input, a missing file, a rejected archive.

    The CLI prints `error: <message>` and exits non-zero instead of a traceback.
    """
