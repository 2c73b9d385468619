"""Fetching the dataset archive and the backbone weights: download, verify, extract safely.

Sources are http(s) URLs, file:// URLs or local paths. Downloads go to a `.part` file (resumed with
HTTP Range and If-Range after a dropped connection), are checked against the expected sha256, and only
then renamed into the download folder, with a small JSON record of sha256 and size beside them. Each
source has its own name there (a digest of its URL, then its file name), so two sources whose URLs end
alike never share a cached copy.
Extraction rejects unsafe entries, bounds size and entry count, and swaps the new tree in whole.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import json
import lzma
import os
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from catdog import __version__
from catdog.errors import CatdogError
from catdog.fsutil import atomic_path, replace_dir, temp_dir_beside, write_json
from catdog.training.params import FetchParams, Source
from catdog.progress import progress_bar

CHUNK = 1 << 20
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
if hasattr(zipfile, "ZIP_ZSTANDARD"):  # Python >= 3.14
    ZIP_METHODS.add(zipfile.ZIP_ZSTANDARD)
# Errors that, while extracting into a fresh folder, mean two entries claim the same path.
CONFLICT_ERRNOS = (errno.EEXIST, errno.EISDIR, errno.ENOTDIR)


class CorruptArchive(CatdogError):
    """The archive file itself is damaged, cut short or not an archive: fetching it again may help."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int


def _local_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme and len(parsed.scheme) > 1:
        raise CatdogError(f"unsupported source {url!r}: use an http(s) URL, a file:// URL or a local path")
    return Path(url)


def file_name(url: str) -> str:
    """The file name a source URL or path names (its last path component)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https", "file"):
        name = PurePosixPath(parsed.path).name
    else:  # a local path (a drive letter parses as a scheme): '#' and '?' are part of its name
        name = Path(url).name
    if not name:
        raise CatdogError(f"source {url!r} does not name a file")
    return name


def cache_name(url: str) -> str:
    """The download folder's name for a source: `<digest12>-<file name>`, the digest of its URL (of the absolute
    path for a local source), so `.../content?id=1` and `.../content?id=2`, or two local files named `file`, differ."""
    local = _local_path(url)
    key = os.fsencode(local.absolute()) if local is not None else url.encode("utf-8", "surrogatepass")
    return f"{hashlib.sha256(key).hexdigest()[:12]}-{file_name(url)}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_local(src: Path, part: Path) -> None:
    try:
        size = src.stat().st_size
        with open(src, "rb") as fin, open(part, "wb") as fout, progress_bar(f"copy {src.name}", size, "bytes") as advance:
            while chunk := fin.read(CHUNK):
                fout.write(chunk)
                advance(len(chunk))
    except FileNotFoundError:
        raise CatdogError(f"source not found: {src}") from None
    except IsADirectoryError:
        raise CatdogError(f"source is a directory, not a file: {src}") from None
    except PermissionError:
        raise CatdogError(f"source not readable: {src}") from None


def _record_of(path: Path) -> Path:
    """The small JSON kept beside a download: sha256 and source of a finished one, or the validators of the
    response that started a partial one."""
    return path.with_name(f"{path.name}.json")


def _if_range(url: str, state: Path) -> str | None:
    """The If-Range value saved when the partial download of `url` began; None if it cannot be resumed safely."""
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("url") != url:
        return None
    etag, modified = saved.get("etag"), saved.get("last_modified")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):  # If-Range takes only a strong ETag
        return etag
    return modified if isinstance(modified, str) and modified else None


def _save_resume_state(state: Path, url: str, headers: http.client.HTTPMessage) -> None:
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    if etag or modified:
        write_json(state, {"url": url, "etag": etag, "last_modified": modified})
    else:
        state.unlink(missing_ok=True)


def _http_download(url: str, part: Path, timeout_s: float, retries: int, backoff_s: float) -> None:
    host = urllib.parse.urlparse(url).netloc
    state = _record_of(part)
    attempt = 0
    started_here = False  # this call began the partial file: a retry seconds later may resume it without validators
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"catdog/{__version__}"}
        validator = _if_range(url, state) if have else None
        if validator is None and not started_here:
            have = 0  # a partial from an earlier run, unvalidated: the server's file may have changed since
        if have:
            headers["Range"] = f"bytes={have}-"
        if have and validator:
            # A server whose file changed answers If-Range with the whole new file (200), not a range of it.
            headers["If-Range"] = validator
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s) as resp:
                resumed = have > 0 and resp.status == 206
                if resumed and not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                    part.unlink()  # the server sent some other range than the one we asked for: start over
                    continue
                if not resumed:
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, "ab" if resumed else "wb") as fh, progress_bar(
                    f"download {file_name(url)}", total, "bytes"
                ) as advance:
                    if not resumed:  # saved only once the old partial is emptied, so it never describes other bytes
                        _save_resume_state(state, url, resp.headers)
                        started_here = True
                    advance(have)
                    while chunk := resp.read(CHUNK):
                        fh.write(chunk)
                        advance(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise http.client.IncompleteRead(b"", total - part.stat().st_size)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:
                part.unlink()  # our partial file is not a prefix the server can continue: start over
                continue
            if exc.code >= 500 and attempt < retries:
                pass
            else:
                raise CatdogError(f"HTTP {exc.code} {exc.reason} fetching {url}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, socket.timeout) as exc:
            if attempt >= retries:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(exc, urllib.error.URLError) and not isinstance(reason, (TimeoutError, socket.timeout)):
                    raise CatdogError(f"cannot reach {host}: {reason}") from None
                tries = f"{retries + 1} attempt{'s' if retries else ''}"
                raise CatdogError(f"download of {url} failed after {tries}: {reason or type(exc).__name__}") from None
        attempt += 1
        time.sleep(min(30.0, backoff_s * 2 ** (attempt - 1)))


def download(source: Source, downloads: Path, timeout_s: float = 30.0, retries: int = 4, backoff_s: float = 1.0) -> Fetched:
    """Get `source` into `downloads/`, verified; reuse a previous download whose record matches."""
    downloads.mkdir(parents=True, exist_ok=True)
    name = cache_name(source.url)
    final = downloads / name
    record = _record_of(final)
    expected = source.sha256.lower() if source.sha256 else None
    local = _local_path(source.url)
    # A local source may change under the same path: its size and mtime are part of the record.
    stamp = None
    if local is not None:
        try:
            info = local.stat()
        except OSError:
            raise CatdogError(f"source not found: {local}") from None
        stamp = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}

    if final.exists() and record.exists():
        try:
            previous = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        same_source = previous.get("url") == source.url and previous.get("source") == stamp
        if same_source and expected in (None, previous.get("sha256")):
            actual = sha256_of(final)
            if actual == previous.get("sha256"):
                return Fetched(final, actual, final.stat().st_size)

    part = downloads / f"{name}.part"
    if local is not None:
        _copy_local(local, part)
    else:
        _http_download(source.url, part, timeout_s, retries, backoff_s)
    _record_of(part).unlink(missing_ok=True)

    actual = sha256_of(part)
    if expected and actual != expected:
        part.unlink()
        raise CatdogError(f"checksum mismatch for {source.url}: expected sha256 {expected}, got {actual}")
    size = part.stat().st_size
    os.replace(part, final)
    write_json(record, {"url": source.url, "sha256": actual, "size": size, "source": stamp})
    return Fetched(final, actual, size)


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise CatdogError(f"archive rejected: absolute path {name!r}")
    if ".." in path.parts:
        raise CatdogError(f"archive rejected: path escapes the target {name!r}")
    return path


def _check_bounds(count: int, total: int, max_files: int, max_bytes: int) -> None:
    if count > max_files:
        raise CatdogError(f"archive rejected: {count} entries exceed the limit of {max_files}")
    if total > max_bytes:
        raise CatdogError(f"archive rejected: {total} uncompressed bytes exceed the limit of {max_bytes}")


def _check_not_empty(archive: Path, files: int) -> None:
    if files == 0:
        raise CatdogError(f"archive rejected: {archive.name} contains no files")


def _extract_zip(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _safe_member(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise CatdogError(f"archive rejected: link entry {info.filename!r}")
            if info.flag_bits & 0x1:
                raise CatdogError(f"archive rejected: {archive.name}: encrypted entries are not supported ({info.filename!r})")
            if info.compress_type not in ZIP_METHODS:
                raise CatdogError(
                    f"archive rejected: {archive.name}: unsupported compression method {info.compress_type} ({info.filename!r})"
                )
        _check_bounds(len(infos), sum(i.file_size for i in infos), max_files, max_bytes)
        _check_not_empty(archive, sum(not i.is_dir() for i in infos))
        written = 0
        for info in infos:
            dest = target / _safe_member(info.filename)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(dest, "wb") as fout:
                while chunk := fin.read(CHUNK):
                    written += len(chunk)
                    if written > max_bytes:
                        raise CatdogError(f"archive rejected: more than {max_bytes} uncompressed bytes")
                    fout.write(chunk)


def _check_tar_member(member: tarfile.TarInfo) -> None:
    _safe_member(member.name)
    # Links are rejected outright (as in zips): checking each target alone is not enough, since an
    # earlier link can redirect a later entry's path outside the target.
    if member.issym() or member.islnk():
        raise CatdogError(f"archive rejected: link entry {member.name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise CatdogError(f"archive rejected: special file entry {member.name!r} (device or FIFO)")


def _extract_tar(archive: Path, target: Path, max_bytes: int, max_files: int) -> None:
    with open(archive, "rb") as raw, tarfile.open(fileobj=raw) as tf:
        members = tf.getmembers()
        # tarfile takes a plain tar cut off at (or inside) a header for a complete one; a compressed
        # tar cut short fails in its decompressor instead, so only a plain one needs this check.
        if tf.fileobj is raw:
            raw.seek(tf.offset)
            if raw.read(2 * tarfile.BLOCKSIZE) != bytes(2 * tarfile.BLOCKSIZE):
                raise tarfile.ReadError(f"no end-of-archive marker after {len(members)} entries")
        for member in members:
            _check_tar_member(member)
        _check_bounds(len(members), sum(m.size for m in members), max_files, max_bytes)
        _check_not_empty(archive, sum(m.isfile() for m in members))
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library's checks as well
            tf.extractall(target, filter="data")
        else:
            tf.extractall(target)


def _entry_name(filename: object, tmp: Path) -> str:
    """An error's path as the archive names it, relative to the extraction folder."""
    try:
        return Path(os.fsdecode(filename)).relative_to(tmp).as_posix()
    except (TypeError, ValueError):
        return str(filename)


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) into `dest`, replacing it only when extraction succeeded."""
    with open(archive, "rb") as fh:
        magic = fh.read(4)
    # By leading bytes first: is_zipfile looks for an end record near the end, which a tar whose
    # last member is a zip also has. A zip cut short has lost that record but keeps its magic.
    if magic in ZIP_MAGIC:
        extractor = _extract_zip
    elif tarfile.is_tarfile(archive):
        extractor = _extract_tar
    elif zipfile.is_zipfile(archive):  # a zip behind a prefix, such as a self-extracting stub
        extractor = _extract_zip
    else:
        raise CorruptArchive(f"{archive.name} is not a zip or tar archive")
    tmp = temp_dir_beside(dest, ".extract")
    try:
        extractor(archive, tmp, max_bytes, max_files)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in CONFLICT_ERRNOS:
            raise CatdogError(
                f"archive rejected: {archive.name} has conflicting entries ({exc.strerror}: {_entry_name(exc.filename, tmp)})"
            ) from None
        # Any other OSError with an errno is the disk's fault (full, read-only), not the archive's.
        if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, (gzip.BadGzipFile, lzma.LZMAError)):
            raise CatdogError(f"cannot extract {archive.name} into {dest.parent}: {exc.strerror}") from None
        raise CorruptArchive(f"archive rejected: {archive.name} is corrupt or truncated ({' '.join(str(exc).split())})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)


def fetch(params: FetchParams, dataset_out: Path, weights_out: Path, downloads: Path) -> tuple[Fetched, Fetched]:
    """Fetch and extract the dataset archive into `dataset_out`; fetch the weights file to `weights_out`."""
    options = {"timeout_s": params.timeout_s, "retries": params.retries}
    dataset = download(params.dataset, downloads, **options)
    weights = download(params.weights, downloads, **options)
    try:
        extract_archive(dataset.path, dataset_out, params.max_bytes, params.max_files)
    except CorruptArchive:
        # Otherwise every rerun would reuse the bad cached copy: drop it so the next run fetches it again.
        # It is always catdog's own copy, never the user's file, even for a local source inside the
        # download folder: the copy's name starts with the digest of the source's path.
        _record_of(dataset.path).unlink(missing_ok=True)
        dataset.path.unlink(missing_ok=True)
        raise
    with atomic_path(weights_out) as tmp:
        shutil.copyfile(weights.path, tmp)
    return dataset, weights
