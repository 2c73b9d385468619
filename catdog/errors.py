"""The one exception type that reaches the user as a one-line message, and the redaction every such line gets."""

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


_URL_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]*[^\s'\"<>.,;:)]")


def redact(text: str) -> str:
    """`text` with every URL in it redacted (see `redact_url`): for `error:` lines and exception texts."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
