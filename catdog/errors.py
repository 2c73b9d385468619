"""The one exception type that reaches the user as a one-line message, the redaction every such line gets, and
the one way user text is shown (`printable`)."""

import re


class CatdogError(Exception):
    """An expected failure: bad input, a missing file, a rejected archive.

    The CLI prints `error: <message>` and exits non-zero instead of a traceback.
    """


def redact_url(url: str) -> str:
    """`url` fit for a message: any user:password@ removed and any query string replaced by `?...`
    (a presigned URL's signature is a secret)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if scheme.lower() != "s3":  # an s3:// URL has no user part, and a "#" is an ordinary key character
        host, slash, path = rest.partition("/")
        rest = host.rpartition("@")[2] + slash + path.partition("#")[0]
    head, query, _ = rest.partition("?")
    return f"{scheme}://{head}" + ("?..." if query else "")


# A URL ends before white space, a quote or backtick, or the punctuation that ends a sentence; a query already
# redacted ("?...") is taken whole, so redacting a message twice (a CatdogError's text, then the CLI) changes nothing.
_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:)](?:\.\.\.)?")


def redact(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`): for `error:` lines and exception texts."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def printable(text: object) -> str:
    """Text safe to show on one line of a terminal or page: every character that is not printable (control
    characters such as ESC, CR and LF, bidirectional overrides, zero-width ones, lone surrogates of an
    undecodable file name) as its Python escape (`\\x1b`, `\\n`, `\\u202e`, `\\udcff`); spaces are kept."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in s)
