"""Where the files to label come from: a local folder or an S3 prefix. Each lists (without opening) and reads.

A listing is a sorted list of relative paths ("/"-separated) plus the few problems known without reading
a file (broken symlink, FIFO, ...). A path is held as its CSV text (`path_text`): what the labels CSV shows, sorts
and shards by; a source opens `path_from_text(rel)`. Only the path text is kept per file, so ten million files cost little
more than their names; full paths are built when a file is read. Sources are small picklable values, so
a Ray actor on another node rebuilds the same source from them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import urllib.parse
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from catdog.errors import CatdogError, redact, redact_url
from catdog.fsutil import NotRegularFile, open_regular


_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")


def path_text(name: str) -> str:
    """A file name (undecodable bytes as surrogateescape, as os.listdir gives them) as the labels CSV writes it:
    every backslash doubled and every undecodable byte written `\\xHH`, so the text is valid UTF-8 and maps back to
    exactly one name. A UTF-8 name without a backslash, nearly every name, is unchanged."""
    if "\\" not in name and (name.isascii() or not _has_surrogate(name)):
        return name
    raw = name.replace("\\", "\\\\").encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def _has_surrogate(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def path_from_text(text: str) -> str:
    """The file name `path_text` wrote as `text` (the inverse of `path_text`)."""
    if "\\" not in text:
        return text
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), text)


@dataclass(frozen=True)
class Listing:
    """The files to label, in order, and the reasons some cannot be read, known from listing alone."""

    paths: list[str]
    problems: Mapping[str, str] = field(default_factory=dict)
    # Each file's identity, parallel to `paths` (None until known): its size in bytes, and its stamp, the mtime in
    # nanoseconds for a folder or a 64-bit hash of the ETag for S3; -1 where unknown. `--update` keeps a row only
    # when both are unchanged. Two int64 arrays: 16 bytes a file, no object per file.
    sizes: array | None = None
    stamps: array | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def only(self, paths: list[str]) -> Listing:
        """The same listing cut down to `paths` (a filtered copy of `self.paths`, in its order)."""
        if self.sizes is None or self.stamps is None:
            return Listing(paths, self.problems)
        sizes, stamps, j = array("q"), array("q"), 0
        for rel in paths:
            while self.paths[j] != rel:
                j += 1
            sizes.append(self.sizes[j])
            stamps.append(self.stamps[j])
        return Listing(paths, self.problems, sizes, stamps)


class Source(Protocol):
    def list(self, recursive: bool = True, follow_links: bool = True, skip: Callable[[str], bool] | None = None,
             spread: Spread | None = None) -> Listing:
        """Every file, sorted by relative path; `skip(real_path)` leaves out (local) files such as the run's own CSV
        (a `skip` with a `marker` attribute, like `catdog.labeling.labels.own_files`, matches only names holding it);
        `spread` lists parts of a recursive listing in other processes, with the same result."""

    def opened(self, rel: str) -> AbstractContextManager[BinaryIO | bytes]:
        """The file for `catdog.images.load_image`: an open regular file, or the object's bytes; OSError if it
        cannot be read."""

    def read_bytes(self, rel: str) -> bytes:
        """The file's bytes; OSError (FileNotFoundError when it is gone) if it cannot be read."""

    def describe(self) -> str:
        """The source as a user would write it: an absolute folder path or s3://bucket/prefix."""

    def endpoint(self) -> str | None:
        """The store the source reads from, as `describe_endpoint` gives it (no credentials, no query string):
        None for a local folder or AWS's own S3. Part of the resume key and the job record, so two stores
        holding the same bucket and key names are never mixed."""


READ_WHOLE_BYTES = 16 * 2**20  # local files up to this size are read whole before decoding


def _read_whole(fd: int, size: int) -> bytes:
    """The file's bytes to its end: one read when it has the size fstat gave, more if it grew or shrank since
    (or a file system returns short reads)."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    chunks = [data]
    while chunk := os.read(fd, 2**20):
        chunks.append(chunk)
    return b"".join(chunks)


def _special(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
    return f"not a regular file ({kind.get(stat.S_IFMT(mode), 'special file')})"


@dataclass(frozen=True)
class LocalSource:
    root: str

    def describe(self) -> str:
        return os.path.abspath(self.root)

    def endpoint(self) -> str | None:
        return None

    @contextmanager
    def opened(self, rel: str) -> Iterator[BinaryIO | bytes]:
        """A file of up to READ_WHOLE_BYTES as its bytes (read in one system call: a photo's or a broken file's
        cost is then mostly the decoder's), a larger one as an open file the decoder reads as it goes."""
        try:  # a FIFO put in a file's place after listing must not block the reading thread for good
            fd, st = open_regular(os.path.join(self.root, path_from_text(rel)))
        except NotRegularFile as exc:
            from catdog.images import ImageError

            raise ImageError(_special(exc.mode) or "not a regular file") from None
        try:
            data = _read_whole(fd, st.st_size) if st.st_size <= READ_WHOLE_BYTES else None
        except BaseException:
            os.close(fd)
            raise
        if data is not None:
            os.close(fd)
            yield data
            return
        with os.fdopen(fd, "rb") as fh:
            yield fh

    def read_bytes(self, rel: str) -> bytes:
        with open(os.path.join(self.root, path_from_text(rel)), "rb") as fh:
            return fh.read()

    def list(self, recursive: bool = True, follow_links: bool = True, skip: Callable[[str], bool] | None = None,
             spread: Spread | None = None) -> Listing:
        """Hidden files included. Symlinked files are followed; symlinked folders too unless `follow_links` is
        off (then each is an error row). Each real folder is entered once, remembered by (st_dev, st_ino): real
        folders are walked first and symlinked ones after, in sorted order, so a folder is listed under its own
        path when it is inside the tree, and a loop or a second link to a listed folder is one error row
        instead of a hang or doubled rows. The same tree gives the same listing on every run and machine.

        `spread` (the Ray engine's cluster, which sees the folder at the same path) walks the real folders in
        other processes: the driver lists the top levels, down to where there are enough subfolders to split
        (SPREAD_ENOUGH), and joins the parts; the symlinked folders are then walked in the driver, as in one
        process. The listing is the same either way: the tree is walked again in one process when a part cannot
        give the driver's identities (another node where the folder is another tree, or a folder inside it on
        another file system, whose device number the driver's does not map to) or a folder is met twice among the
        real ones (a bind mount: which path lists it depends on the walk's order)."""
        root = self.root
        try:
            top = os.stat(root)
        except OSError:
            raise CatdogError(f"folder not found: {root}") from None
        if not stat.S_ISDIR(top.st_mode):
            raise CatdogError(f"not a folder: {root}")
        walk = _Walk(recursive, follow_links, skip, {(top.st_dev, top.st_ino): "."})
        width = max(1, min(SPREAD_PARTS, spread.width)) if spread is not None and recursive else 1
        if width > 1:
            root = os.path.abspath(root)  # workers do not share the driver's working folder
        level = [(root, "")]
        for _ in range(SPREAD_LEVELS if width > 1 else 0):
            if len(level) >= min(width, SPREAD_ENOUGH) or walk.doubled:
                break
            level = [sub for folder, prefix in level for sub in walk.folder(folder, prefix)]  # breadth first
        clash = False  # a part met a folder twice, or one it cannot name in the driver's numbers
        if width == 1 or len(level) < 2:
            walk.real(level)
        elif not walk.doubled:
            count, seen, source = min(width, len(level)), dict(walk.seen), LocalSource(root)
            bounds = [len(level) * i // count for i in range(count + 1)]
            for part in spread(list_folders, [(source, level[a:b], follow_links, skip, seen) for a, b in zip(bounds, bounds[1:])]):
                clash |= part.doubled or part.foreign or not walk.seen.keys().isdisjoint(part.seen)
                walk.join(part)
        if width > 1 and (walk.doubled or clash):  # not one process's walk order: walk it in one
            return self.list(recursive, follow_links, skip)
        walk.links()
        walk.paths.sort()
        return Listing(walk.paths, walk.problems)


class _Walk:
    """One walk of a local folder (or of a part of it, in another process: picklable): the files found as path
    texts, the reasons some cannot be labeled, the real folders entered ((st_dev, st_ino) -> path text) and the
    symlinked folders met, which are entered only once every real folder is listed."""

    def __init__(self, recursive: bool, follow_links: bool, skip: Callable[[str], bool] | None, seen: dict):
        self.recursive, self.follow_links, self.skip = recursive, follow_links, skip
        # Every name `skip` can match contains its `marker` (if it has one): the full path is built only for those.
        self.marker = None if skip is None else getattr(skip, "marker", "")
        self.paths: list[str] = []
        self.problems: dict[str, str] = {}
        self.seen = dict(seen)
        self.linked: list[tuple[str, str, tuple[int, int]]] = []  # (path, path text, identity) of symlinked folders
        self.doubled = False  # a real folder met twice (a bind mount)
        # On another node: its device number of the folder's file system -> the driver's (None: the same numbers).
        self.devices: tuple[int, int] | None = None
        self.foreign = False  # an identity the driver's numbers cannot express was met

    def key(self, st: os.stat_result) -> tuple[int, int]:
        """A folder's identity, (st_dev, st_ino), in the driver's numbers."""
        if self.devices is None:
            return st.st_dev, st.st_ino
        if st.st_dev != self.devices[0]:
            self.foreign = True
        return self.devices[1], st.st_ino

    def bad(self, rel: str, reason: str) -> None:
        self.paths.append(rel)
        self.problems[rel] = reason

    def folder(self, folder: str, prefix: str) -> list[tuple[str, str]]:
        """List one folder (`prefix`: its path text and "/", "" for the labeled folder): its files into `paths`,
        its symlinked folders into `linked`; its real subfolders, entered for the first time, in order."""
        skip, marker, paths = self.skip, self.marker, self.paths
        try:
            real_folder = os.path.realpath(folder)
            others = []  # folders, links and special files; regular files go straight to `paths`
            with os.scandir(folder) as it:
                for child in it:
                    if child.is_file(follow_symlinks=False):  # a regular file, not a link: no stat call
                        name = child.name
                        if marker is None or marker not in name or not skip(os.path.join(real_folder, name)):
                            paths.append(prefix + path_text(name))
                    else:
                        others.append(child)
        except OSError as exc:
            if not prefix:
                raise CatdogError(f"cannot read folder {folder}: {exc.strerror or exc}") from None
            self.bad(prefix.rstrip("/"), f"cannot list folder: {exc.strerror or exc}")
            return []
        subfolders = []
        for child in sorted(others, key=lambda c: path_text(c.name)):
            rel = prefix + path_text(child.name)
            try:
                link = child.is_symlink()
                # A link to the run's own CSV or working files (even one not written yet) is theirs too.
                if link and skip is not None and skip(os.path.realpath(child.path)):
                    continue
                if link:
                    try:
                        st = os.stat(child.path)
                    except OSError as exc:
                        self.bad(rel, "symlink loop" if exc.errno == errno.ELOOP else "broken symlink")
                        continue
                else:
                    st = child.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if link and not self.follow_links:
                        self.bad(rel, "symlink to a folder (not followed)")
                    elif not self.recursive:
                        continue
                    elif link:
                        self.linked.append((child.path, rel, self.key(st)))
                    elif (first := self.seen.setdefault(self.key(st), rel)) != rel:
                        self.doubled = True
                        self.bad(rel, f"a folder already listed ({first})")  # a bind mount of a listed folder
                    else:
                        subfolders.append((child.path, rel + "/"))
                    continue
                if not link and marker is not None and marker in child.name and skip(os.path.join(real_folder, child.name)):
                    continue
                problem = _special(st.st_mode)
                if problem:
                    self.bad(rel, problem)
                else:
                    paths.append(rel)
            except OSError as exc:
                self.bad(rel, f"cannot stat: {exc.strerror or exc}")
        return subfolders

    def real(self, folders: list[tuple[str, str]]) -> None:
        """Walk `folders` and every real folder under them, depth first, in order."""
        stack = folders[::-1]
        while stack:
            stack.extend(reversed(self.folder(*stack.pop())))

    def links(self) -> None:
        """Enter the symlinked folders met (and those met in them), the first in path-text order first."""
        while self.linked:
            self.linked.sort(key=lambda item: item[1], reverse=True)
            path, rel, key = self.linked.pop()
            first = self.seen.setdefault(key, rel)
            if first != rel:
                self.bad(rel, f"symlink to a folder already listed ({'the labeled folder itself' if first == '.' else first})")
                continue
            self.real([(path, rel + "/")])

    def join(self, part: _Walk) -> None:
        self.paths += part.paths
        self.problems.update(part.problems)
        self.seen.update(part.seen)
        self.linked += part.linked


def list_folders(source: LocalSource, folders: list[tuple[str, str]], follow_links: bool,
                 skip: Callable[[str], bool] | None, seen: dict) -> _Walk:
    """The real folders `folders` (absolute paths, path texts) of `source` and every real folder under them: one
    part of a spread listing, run in a worker, which must see the folder where the driver does. `seen`: the
    folders the driver entered, by identity; identities here are given in the driver's numbers (a shared file
    system may have another device number on each node, never other inode numbers), or the part is `foreign`."""
    try:
        top = os.stat(source.root)
    except OSError:
        top = None
    if top is None or not stat.S_ISDIR(top.st_mode):
        raise CatdogError(f"folder not found on every node of the cluster: {source.root} (a folder labeled with --engine ray "
                          "must be at the same path on each node)")
    walk = _Walk(True, follow_links, skip, seen)
    driver = {rel: key for key, rel in seen.items()}
    if top.st_dev != driver["."][0]:
        walk.devices = (top.st_dev, driver["."][0])
    # The same tree here only if the labeled folder and each folder handed over are the driver's, inode for inode.
    for path, prefix in [(source.root, "./"), *folders]:
        try:
            same = walk.key(os.stat(path)) == driver.get(prefix[:-1])
        except OSError:
            same = False
        if not same or walk.foreign:
            walk.foreign = True
            return walk
    walk.real(folders)
    walk.seen = {key: rel for key, rel in walk.seen.items() if key not in seen}  # only the new ones go back
    walk.paths.sort()  # so the driver's sort finds long runs in order
    return walk


MAX_OBJECT_BYTES = 128 * 2**20  # an S3 object is read whole before decoding; larger ones are error rows
LIST_CONCURRENCY = 32  # list requests in flight while a prefix is listed by its sub-prefixes
LIST_DISCOVERY_LEVELS = 2  # how deep sub-prefixes are looked for (each level costs a round of requests)

# The S3 error codes that are about one object: its row says so and the run goes on. Every other failure
# (InvalidAccessKeyId, ExpiredToken, SignatureDoesNotMatch, RequestTimeTooSkewed, a vanished bucket, the
# endpoint or network, ...) is about the credentials or the store, and stops the run with its progress kept.
_OBJECT_ERRORS = {"NoSuchKey", "NotFound", "AccessDenied", "InvalidObjectState"}


def describe_endpoint(endpoint_url: str | None) -> str | None:
    """The S3 endpoint a source reads from, as it goes into the resume key and the job record: the explicit
    URL, else $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, as scheme://host[:port][/path] without credentials,
    query string or trailing "/"; None for AWS's own S3."""
    url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None
    parts = urllib.parse.urlsplit(url.strip())
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme.lower(), host, parts.path.rstrip("/"), "", ""))


def check_endpoint(endpoint_url: str | None) -> None:
    """Refuse an endpoint URL that carries credentials (botocore would fail with a cryptic header error), or that
    is not a URL at all (an unclosed IPv6 bracket, a port that is no number)."""
    url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise CatdogError(f"invalid S3 endpoint {redact_url(url)!r}: {exc}") from None
    if "@" in parts.netloc:
        raise CatdogError(
            f"the S3 endpoint {redact_url(url)} holds credentials (user:password@): give the bare URL, and the "
            "credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
        )


def _s3_error(exc: BaseException) -> dict:
    """The S3 error response ({"Code": ..., "Message": ...}) behind an exception s3fs or botocore raised, found
    through its causes (s3fs turns InvalidAccessKeyId and AccessDenied alike into PermissionError); {} when
    the failure never got an answer from the store (endpoint, network)."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        response = getattr(link, "response", None)
        error = response.get("Error") if isinstance(response, dict) else None
        if error:
            return error
        link = link.__cause__ or link.__context__
    return {}


class StoreError(CatdogError):
    """A failure of the store itself (credentials, endpoint, network) while reading an object: it stops the
    command. Its text says what failed; the command adds what to do next (predict-folder: rerun with --resume)."""


@dataclass(frozen=True)
class S3Source:
    """Objects under s3://bucket/prefix on any S3-compatible store (s3fs; credentials, region and endpoint from
    the standard AWS environment variables and config files, or `endpoint_url`)."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, url: str, endpoint_url: str | None = None) -> S3Source:
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise CatdogError(f"invalid S3 source {redact_url(url)!r}: expected s3://bucket/prefix")
        check_endpoint(endpoint_url)
        prefix = prefix.strip("/")
        return cls(bucket, prefix + "/" if prefix else "", endpoint_url)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def endpoint(self) -> str | None:
        return describe_endpoint(self.endpoint_url)

    def _fs(self):
        return _s3_filesystem(self.endpoint_url)

    @contextmanager
    def opened(self, rel: str) -> Iterator[bytes]:
        yield self.read_bytes(rel)

    def read_bytes(self, rel: str) -> bytes:
        """One GET of the exact key (no path parsing: `?` and `#` are ordinary key characters). What is about
        this object is an OSError or ImageError (its row says so): missing, forbidden, archived, or over
        MAX_OBJECT_BYTES now (it may have grown since it was listed). A failure of the credentials or the
        store itself (endpoint, network) is a CatdogError that stops the run, its progress kept, rather than
        turning every later object into an error row."""
        import fsspec.asyn

        fs, key = self._fs(), self.prefix + path_from_text(rel)

        async def get() -> bytes | int:
            response = await fs._call_s3("get_object", Bucket=self.bucket, Key=key)
            body = response["Body"]
            size = response.get("ContentLength")
            if size is not None and size > MAX_OBJECT_BYTES:
                body.close()
                return size
            # read(n) returns what has arrived, up to n bytes (a socket read): read until the end of the body.
            chunks, total = [], 0
            while chunk := await body.read(1 << 20):
                total += len(chunk)
                if total > MAX_OBJECT_BYTES:
                    body.close()
                    return total
                chunks.append(chunk)
            data = b"".join(chunks)
            if size is not None and len(data) != size:
                raise ConnectionError(f"the store sent {len(data):,} of {size:,} bytes")
            return data

        try:
            got = fsspec.asyn.sync(fs.loop, get)
        except Exception as exc:  # noqa: BLE001 - botocore, aiohttp: the object's or the store's fault, told apart
            error = _s3_error(exc)
            code = error.get("Code")
            if code in ("NoSuchKey", "NotFound", "404"):  # "404": a GET answered without an error body
                raise FileNotFoundError(errno.ENOENT, "file not found") from None
            if code == "AccessDenied":
                raise PermissionError(errno.EACCES, "permission denied") from None
            if code == "InvalidObjectState":
                from catdog.images import ImageError

                raise ImageError(f"archived ({error.get('StorageClass') or 'GLACIER'}): restore it first") from None
            url = redact_url(f"s3://{self.bucket}/{key}")
            raise StoreError(f"cannot read {url}: {_s3_reason(exc)}") from None
        if isinstance(got, int):
            from catdog.images import ImageError

            raise ImageError(_too_large(got))
        return got

    def _walk(self, recursive: bool, take: Callable[[list[dict]], None], leaves: list[str] | None = None,
              spread: int = 0, in_flight: int | None = None) -> list[str]:
        """Every key under the prefix into `take`, a page (up to 1,000 objects) at a time, in no set order.
        Recursive: the sub-prefixes ("folders") are found with Delimiter "/", down to where there are enough
        to keep LIST_CONCURRENCY requests busy (at most LIST_DISCOVERY_LEVELS levels), and listed concurrently,
        at most LIST_CONCURRENCY requests in flight, so ten million keys are not 10,000 requests one after
        another. Memory: the pages in flight, each handed to `take` as it arrives.

        `spread` > 0: only find sub-prefixes, down to where there are enough to split (SPREAD_ENOUGH, or `spread`
        if fewer; at most SPREAD_LEVELS levels), and return those still to list, for other processes (`leaves`: list exactly these, `in_flight`
        requests at a time)."""
        import asyncio

        import fsspec.asyn

        fs = self._fs()

        async def listed(prefix: str, delimiter: bool, gate: asyncio.Semaphore) -> list[str]:
            """Every page of one listing into `take`; the sub-prefixes it found (with `delimiter`)."""
            args = {"Bucket": self.bucket, "Prefix": prefix, **({"Delimiter": "/"} if delimiter else {})}
            found = []
            while True:
                try:
                    async with gate:
                        page = await fs._call_s3("list_objects_v2", **args)
                    more = page.get("IsTruncated") and page["NextContinuationToken"]
                except Exception as exc:  # noqa: BLE001 - any failure here means the source cannot be listed
                    raise CatdogError(f"cannot list {redact_url(self.describe())}: {_s3_reason(exc)}") from None
                take(page.get("Contents", []))
                found += [common["Prefix"] for common in page.get("CommonPrefixes", [])]
                if not more:
                    return found
                args["ContinuationToken"] = more

        async def every(coros) -> list:
            tasks = [asyncio.ensure_future(c) for c in coros]
            try:
                return await asyncio.gather(*tasks)
            except BaseException:  # one listing failed: stop the others before the error goes up
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        async def walk() -> list[str]:
            gate = asyncio.Semaphore(in_flight or LIST_CONCURRENCY)
            if leaves is not None:
                await every(listed(prefix, False, gate) for prefix in leaves)
                return []
            if not recursive:
                await listed(self.prefix, True, gate)
                return []
            level = [self.prefix]
            for _ in range(SPREAD_LEVELS if spread else LIST_DISCOVERY_LEVELS):
                if len(level) >= (min(spread, SPREAD_ENOUGH) if spread else LIST_CONCURRENCY):
                    break
                # Keys directly at this level arrive with the sub-prefixes; each key is in exactly one listing.
                level = [sub for subs in await every(listed(prefix, True, gate) for prefix in level) for sub in subs]
            if spread:
                return level
            await every(listed(prefix, False, gate) for prefix in level)
            return []

        return fsspec.asyn.sync(fs.loop, walk)

    def list(self, recursive: bool = True, follow_links: bool = True, skip: Callable[[str], bool] | None = None,
             spread: Spread | None = None) -> Listing:
        """Listed page by page (1,000 keys each, sub-prefixes concurrently: `_walk`): only the relative key texts
        are kept (and a reason for the rare object that cannot be labeled from its listing alone), sorted as
        text. Empty keys ending in "/" are folder markers.

        `spread` (the Ray engine's cluster) lists the sub-prefixes in other processes: the driver only finds
        them (Delimiter "/", down to where there are enough to split: SPREAD_ENOUGH) and joins the parts, so
        parsing ten million keys, the bound of one process, is spread over the cluster's CPUs. The listing is
        the same either way."""
        part = _Part(len(self.prefix))
        width = max(1, min(SPREAD_PARTS, spread.width)) if spread is not None and recursive else 0
        leaves = self._walk(recursive, part.take, spread=width)
        if leaves:  # contiguous runs of sorted sub-prefixes, each part sorted where it was listed
            count = min(width, len(leaves))
            bounds = [len(leaves) * i // count for i in range(count + 1)]
            in_flight = max(1, min(LIST_CONCURRENCY, SPREAD_IN_FLIGHT // count))
            for other in spread(list_leaves, [(self, leaves[a:b], in_flight) for a, b in zip(bounds, bounds[1:])]):
                part.extend(other)
        if not part.paths:
            raise CatdogError(f"no objects found under {redact_url(self.describe())}")
        part.sort()
        return Listing(part.paths, part.problems, part.sizes, part.stamps)


# Spreading a listing over a cluster (the Ray engine): the driver looks for subfolders or sub-prefixes down to
# SPREAD_LEVELS levels, until a level has SPREAD_ENOUGH of them (or one per cluster CPU, if fewer: each level it
# goes down is listed by the driver alone), and hands them out in up to SPREAD_PARTS parts (one per cluster CPU),
# each listed in its own process; an S3 part keeps its share of SPREAD_IN_FLIGHT requests in flight (at most
# LIST_CONCURRENCY), so the store never sees more than 1,024 at once however large the cluster.
SPREAD_LEVELS = 3
SPREAD_ENOUGH = 32
SPREAD_PARTS = 256
SPREAD_IN_FLIGHT = 1024


class Spread(Protocol):
    """Runs `fn(*args)` for each `args` of `calls` in other processes, `width` at a time at most, and yields the
    results in the order of `calls`."""

    width: int

    def __call__(self, fn: Callable, calls: list[tuple]) -> Iterable: ...


class _Part:
    """Listed keys gathered page by page: relative path texts, sizes, ETag stamps, and the reasons some cannot be
    labeled from their listing alone. Picklable (a part listed in another process comes back as one)."""

    def __init__(self, cut: int):
        self.cut = cut
        self.paths: list[str] = []
        self.problems: dict[str, str] = {}
        self.sizes, self.stamps = array("q"), array("q")

    def take(self, page: list[dict]) -> None:
        cut, paths, sizes, stamps, problems = self.cut, self.paths, self.sizes, self.stamps, self.problems
        for obj in page:
            key, size = obj["Key"], obj.get("Size", 0)
            if key.endswith("/") and not size:
                continue
            rel = path_text(key[cut:])
            paths.append(rel)
            sizes.append(size)
            stamps.append(etag_stamp(obj.get("ETag")))
            if key.endswith("/"):
                problems[rel] = "object key ends with '/' (not a file name)"
            elif size > MAX_OBJECT_BYTES:
                problems[rel] = _too_large(size)

    def sort(self) -> None:
        """Into path-text order (S3 lists in key order, but concurrent listings interleave their pages and escaped
        backslashes may move a few; runs already in order cost little)."""
        paths = self.paths
        if any(a > b for a, b in zip(paths, paths[1:])):
            order = sorted(range(len(paths)), key=paths.__getitem__)
            self.paths = [paths[i] for i in order]
            self.sizes = array("q", (self.sizes[i] for i in order))
            self.stamps = array("q", (self.stamps[i] for i in order))

    def extend(self, other: _Part) -> None:
        self.paths += other.paths
        self.problems.update(other.problems)
        self.sizes += other.sizes
        self.stamps += other.stamps


def list_leaves(source: S3Source, leaves: list[str], in_flight: int | None = None) -> _Part:
    """The keys under the sub-prefixes `leaves` of `source` (one part of a spread listing; run in a worker)."""
    part = _Part(len(source.prefix))
    source._walk(True, part.take, leaves=leaves, in_flight=in_flight)
    part.sort()
    return part


def etag_stamp(etag: str | None) -> int:
    """An object's ETag as a signed 64-bit stamp (-1 when the store gave none): what `--update` compares."""
    if not etag:
        return -1
    return int.from_bytes(hashlib.blake2b(etag.strip('"').encode(), digest_size=8).digest(), "big", signed=True)


def _too_large(size: int) -> str:
    return f"object too large: {size:,} bytes (objects are read whole; the limit is {MAX_OBJECT_BYTES:,})"


# What a store-level failure means, for the codes a user can act on.
_STORE_HINTS = {
    "InvalidAccessKeyId": "the access key is not valid (deleted, revoked or mistyped)",
    "ExpiredToken": "the session token has expired: renew the credentials",
    "SignatureDoesNotMatch": "the request signature does not match (check the secret key)",
    "RequestTimeTooSkewed": "this machine's clock is too far from the store's: sync it",
}


def _s3_reason(exc: BaseException) -> str:
    error = _s3_error(exc)
    code = error.get("Code")
    if code in _STORE_HINTS:
        return f"{_STORE_HINTS[code]} ({code})"
    if code == "AccessDenied" or (not code and isinstance(exc, PermissionError)):
        return "access denied (check the AWS credentials)"
    if code == "NoSuchBucket" or (not code and isinstance(exc, FileNotFoundError)):
        return "no such bucket"
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return redact(f"{code}: {text}" if code and not text.startswith(code) else text)


_FILESYSTEMS: dict[str | None, object] = {}


def _s3_filesystem(endpoint_url: str | None):
    """One s3fs filesystem per endpoint and process, with short retries so a dead endpoint fails in seconds."""
    fs = _FILESYSTEMS.get(endpoint_url)
    if fs is None:
        try:
            import s3fs
        except ImportError:
            raise CatdogError('S3 sources need s3fs: pip install s3fs (or ".[s3]")') from None
        from aiobotocore.session import AioSession

        check_endpoint(endpoint_url)
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        session = AioSession()
        # Timestamps stay text: catdog never reads LastModified, and botocore parsing one per listed key (dateutil)
        # was 80% of parsing a ListObjectsV2 page (14,000 keys/s on one core; 69,000 with text).
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        fs = s3fs.S3FileSystem(
            session=session,
            endpoint_url=endpoint,
            config_kwargs={"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60},
            skip_instance_cache=True,
        )
        _FILESYSTEMS[endpoint_url] = fs
    return fs


def open_source(spec: str | Path, s3_endpoint_url: str | None = None) -> Source:
    """A folder path, or an s3://bucket/prefix URL."""
    text = str(spec)
    if text.startswith("s3://"):
        return S3Source.parse(text, s3_endpoint_url)
    return LocalSource(text)


def shard_of(rel: str, count: int) -> int:
    """A stable shard number in [0, count) for a relative path (same on every machine and run)."""
    digest = hashlib.blake2b(rel.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' with 0 <= K < N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise CatdogError(f"invalid --shard {text!r}: expected K/N, e.g. 0/4") from None
    if n < 1 or not 0 <= k < n:
        raise CatdogError(f"invalid --shard {text!r}: need 0 <= K < N")
    return k, n


def files_digest(paths: list[str]) -> str:
    """A digest of the relative paths to label: resuming is only exact when they have not changed."""
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(paths), 1 << 16):  # each path followed by a NUL, hashed in C a slice at a time
        digest.update(("\0".join(paths[start:start + (1 << 16)]) + "\0").encode("utf-8", "surrogatepass"))
    return digest.hexdigest()
