"""The fetch stage: download (local path, file:// and http from a real server on 127.0.0.1), verify, extract safely."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import struct
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import catdog.training.fetch as fetch_mod
from catdog.errors import CatdogError
from catdog.training.fetch import Fetched, download, extract_archive, fetch
from catdog.training.params import FetchParams, Source
from conftest import REPO, catdog, make_image, make_zip, write_params

MB = 1 << 20
FAST = {"timeout_s": 5.0, "retries": 0, "backoff_s": 0.01}


# --- helpers --------------------------------------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes: to prove a folder was left untouched."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a failed fetch must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".extract", ".tmp", ".old")))


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


def cached(downloads: Path, url: str) -> Path:
    """Where the download cache keeps its copy of `url`."""
    return downloads / fetch_mod.cache_name(url)


def record_of(path: Path) -> Path:
    """The JSON record kept beside a cached copy."""
    return path.with_name(f"{path.name}.json")


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory) -> Path:
    """A little dataset-shaped zip: a few real JPEGs in pets/{train,validation}/{cats,dogs}."""
    root = tmp_path_factory.mktemp("small_zip")
    for split in ("train", "validation"):
        for cls, color in (("cats", (190, 70, 50)), ("dogs", (50, 80, 190))):
            for i in range(2):
                make_image(root / "tree" / "pets" / split / cls / f"{cls[:-1]}.{i}.jpg", color, seed=i)
    return make_zip(root / "tree", root / "pets.zip")


@pytest.fixture(scope="module")
def payload() -> bytes:
    """3 MiB of incompressible bytes: several read chunks, so a connection can drop part-way through."""
    return os.urandom(3 * MB)


# --- a real HTTP server on 127.0.0.1 -------------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes | Path = b""
    status: int = 200  # anything else: answer with this status and no body
    ranges: bool = True  # honour `Range: bytes=N-` with 206; False: always 200 with the full body
    drop_at: int | None = None  # first request only: send this many body bytes, then close the connection
    fail_first: int = 0  # answer this many requests with 503 before serving
    hang: bool = False  # accept, then never answer (until the test ends)
    wrong_range: bool = False  # answer a Range request with 206 but the whole body (Content-Range from byte 0)
    etag: str | None = "auto"  # "auto": a strong ETag derived from the body; None: no ETag header
    last_modified: str | None = None  # sent as Last-Modified when set
    hits: int = 0

    def validators(self) -> tuple[str | None, str | None]:
        etag = self.etag
        if etag == "auto":
            body = self.body
            digest = f"{body.stat().st_size}-{body.stat().st_mtime_ns}" if isinstance(body, Path) else sha256(body)[:16]
            etag = f'"{digest}"'
        return etag, self.last_modified


@dataclass
class Server:
    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def serve(self, name: str, **route) -> str:
        self.routes[f"/{name}"] = Route(**route)
        return f"{self.base}/{name}"

    def seen(self, name: str) -> list[dict[str, str]]:
        return [headers for path, headers in self.requests if path == f"/{name}"]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        state: Server = self.server.state
        state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        route.hits += 1
        if route.hang:
            state.release.wait(30)
            return
        if route.hits <= route.fail_first:
            self.send_error(503)
            return
        if route.status != 200:
            self.send_error(route.status)
            return
        size = route.body.stat().st_size if isinstance(route.body, Path) else len(route.body)
        start, header = 0, self.headers.get("Range", "")
        etag, last_modified = route.validators()
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range not in (etag, last_modified):
            header = ""  # the file changed since the client's copy began: send all of it
        if route.ranges and header.startswith("bytes=") and header.endswith("-"):
            start = 0 if route.wrong_range else int(header[len("bytes="):-1])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        for name, value in (("ETag", etag), ("Last-Modified", last_modified)):
            if value is not None:
                self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        limit = size - start
        if route.drop_at is not None and route.hits == 1:
            limit = route.drop_at - start
        try:
            self._send_body(route.body, start, limit)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _send_body(self, body: bytes | Path, start: int, limit: int) -> None:
        if isinstance(body, bytes):
            self.wfile.write(body[start:start + limit])
            return
        with open(body, "rb") as fh:
            fh.seek(start)
            while limit > 0 and (chunk := fh.read(min(MB, limit))):
                self.wfile.write(chunk)
                limit -= len(chunk)


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def fetch_params(dataset: str, weights: str, sha256: str | None = None, **options) -> FetchParams:
    return FetchParams(dataset=Source(url=dataset, sha256=sha256), weights=Source(url=weights), **{"retries": 0, **options})


# --- sources: local path, file:// URL, http URL ---------------------------------------------------------------------


def test_changed_local_source_is_copied_again_under_the_same_path(tmp_path, small_zip):
    first = download(Source(url=str(small_zip)), tmp_path / "dl")
    data = small_zip.read_bytes()
    small_zip.write_bytes(data + b"\0" * 7)  # new content, same path
    os.utime(small_zip, ns=(0, 10**18))
    second = download(Source(url=str(small_zip)), tmp_path / "dl")
    assert second.size == first.size + 7 and second.sha256 != first.sha256


def test_local_path_is_copied_verified_and_recorded(tmp_path, small_zip):
    expected = sha256(small_zip.read_bytes())
    got = download(Source(url=str(small_zip), sha256=expected), tmp_path / "dl")
    assert got == Fetched(cached(tmp_path / "dl", str(small_zip)), expected, small_zip.stat().st_size)
    assert re.fullmatch(r"[0-9a-f]{12}-pets\.zip", got.path.name)  # a digest of the source, then its readable name
    assert got.path.read_bytes() == small_zip.read_bytes()
    record = json.loads(record_of(got.path).read_text())
    info = small_zip.stat()
    assert record == {
        "url": str(small_zip), "sha256": expected, "size": info.st_size,
        "source": {"size": info.st_size, "mtime_ns": info.st_mtime_ns},
    }
    assert leftovers(tmp_path / "dl") == []


def test_file_url_is_copied_and_sha256_recorded_without_a_pin(tmp_path, small_zip):
    got = download(Source(url=small_zip.as_uri()), tmp_path / "dl")
    assert got.path.read_bytes() == small_zip.read_bytes()
    record = json.loads(record_of(got.path).read_text())
    assert record["sha256"] == sha256(small_zip.read_bytes()) and record["size"] == small_zip.stat().st_size


@pytest.mark.parametrize("name", ["set#1.zip", "set?1.zip"])
def test_local_path_with_hash_or_question_mark_keeps_its_whole_name(tmp_path, small_zip, name):
    source = write(tmp_path / "src" / name, small_zip.read_bytes())
    got = download(Source(url=str(source)), tmp_path / "dl")
    assert got.path == cached(tmp_path / "dl", str(source)) and got.path.name.endswith(f"-{name}")
    assert got.path.read_bytes() == small_zip.read_bytes()
    assert record_of(got.path).exists()


def test_missing_local_source_is_a_clear_error(tmp_path):
    with pytest.raises(CatdogError, match=r"source not found: .*nowhere\.zip"):
        download(Source(url=str(tmp_path / "nowhere.zip")), tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_two_local_files_with_the_same_name_keep_separate_cached_copies(tmp_path):
    a = write(tmp_path / "a" / "file", b"first source")
    b = write(tmp_path / "b" / "file", b"second source, another size")
    got_a = download(Source(url=str(a)), tmp_path / "dl")
    got_b = download(Source(url=str(b)), tmp_path / "dl")
    assert got_a.path != got_b.path and got_a.path.name.endswith("-file") and got_b.path.name.endswith("-file")
    assert got_a.path.read_bytes() == b"first source" and got_b.path.read_bytes() == b"second source, another size"
    assert download(Source(url=str(a)), tmp_path / "dl") == got_a


def test_two_urls_that_end_alike_keep_separate_cached_copies(tmp_path, server):
    one = server.serve("content?id=1", body=b"record one")
    two = server.serve("content?id=2", body=b"record two, longer")
    got_one = download(Source(url=one), tmp_path / "dl", **FAST)
    got_two = download(Source(url=two), tmp_path / "dl", **FAST)
    assert got_one.path != got_two.path and got_one.path.name.endswith("-content")
    assert got_one.path.read_bytes() == b"record one" and got_two.path.read_bytes() == b"record two, longer"
    # Each copy is still reused: asking for either again makes no request.
    assert download(Source(url=one), tmp_path / "dl", **FAST) == got_one
    assert download(Source(url=two), tmp_path / "dl", **FAST) == got_two
    assert len(server.seen("content?id=1")) == 1 and len(server.seen("content?id=2")) == 1


def test_http_download_of_the_real_dataset_is_verified_extracted_and_reused(tmp_path, server, real_dataset):
    zip_path, sha256 = real_dataset.zip, real_dataset.sha256
    url = server.serve("real-dataset.zip", body=zip_path)
    source = Source(url=url, sha256=sha256)

    got = download(source, tmp_path / "dl", **FAST)
    assert got.sha256 == sha256 and got.size == zip_path.stat().st_size
    record = json.loads(record_of(cached(tmp_path / "dl", url)).read_text())
    assert record == {"url": url, "sha256": sha256, "size": zip_path.stat().st_size, "source": None}
    assert leftovers(tmp_path / "dl") == []

    extract_archive(got.path, tmp_path / "images", max_bytes=4 * 1024**3, max_files=200_000)
    jpgs = list((tmp_path / "images").rglob("*.jpg"))
    assert len(jpgs) == 3000
    assert len(list((tmp_path / "images" / real_dataset.top / "train" / "cats").glob("*.jpg"))) == 1000
    assert leftovers(tmp_path) == []

    # A verified download is reused: no second request, same result.
    again = download(source, tmp_path / "dl", **FAST)
    assert again == got
    assert len(server.seen("real-dataset.zip")) == 1


def test_reuse_without_a_pin_still_makes_no_request(tmp_path, server, small_zip):
    url = server.serve("pets.zip", body=small_zip.read_bytes())
    first = download(Source(url=url), tmp_path / "dl", **FAST)
    assert download(Source(url=url), tmp_path / "dl", **FAST) == first
    assert len(server.seen("pets.zip")) == 1


def test_download_whose_file_changed_on_disk_is_fetched_again(tmp_path, server, small_zip):
    url = server.serve("pets.zip", body=small_zip.read_bytes())
    first = download(Source(url=url), tmp_path / "dl", **FAST)
    first.path.write_bytes(b"tampered")
    again = download(Source(url=url), tmp_path / "dl", **FAST)
    assert again.path.read_bytes() == small_zip.read_bytes() and again.sha256 == first.sha256
    assert len(server.seen("pets.zip")) == 2


# --- verification and HTTP errors -----------------------------------------------------------------------------------


def test_wrong_checksum_names_expected_and_actual_and_moves_nothing_into_place(tmp_path, server, small_zip):
    data = small_zip.read_bytes()
    url = server.serve("pets.zip", body=data)
    wrong = "0" * 64
    with pytest.raises(CatdogError) as err:
        download(Source(url=url, sha256=wrong), tmp_path / "dl", **FAST)
    message = str(err.value)
    assert "checksum mismatch" in message and wrong in message and sha256(data) in message
    assert "\n" not in message
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == []


def test_wrong_checksum_keeps_the_previous_good_download_and_dataset(tmp_path, server, small_zip):
    url = server.serve("pets.zip", body=small_zip.read_bytes())
    weights = write(tmp_path / "weights.h5", b"weights")
    good = fetch_params(url, str(weights), sha256=sha256(small_zip.read_bytes()))
    fetch(good, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    before_images, before_dl = snapshot(tmp_path / "images"), snapshot(tmp_path / "dl")
    assert "pets/train/cats/cat.0.jpg" in before_images

    # The server now serves something else under the same name, which fails the new pin.
    server.routes["/pets.zip"].body = zip_bytes({"pets/other.txt": b"not the data"})
    with pytest.raises(CatdogError, match="checksum mismatch"):
        fetch(fetch_params(url, str(weights), sha256="a" * 64), tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert snapshot(tmp_path / "images") == before_images
    assert snapshot(tmp_path / "dl") == before_dl
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "dl") == []


def test_http_404_reports_the_status(tmp_path, server):
    with pytest.raises(CatdogError, match=r"HTTP 404 .*missing\.zip"):
        download(Source(url=f"{server.base}/missing.zip"), tmp_path / "dl", **{**FAST, "retries": 3})
    assert len(server.seen("missing.zip")) == 1  # a 404 is not retried
    assert list((tmp_path / "dl").iterdir()) == []


def test_server_errors_are_retried_with_backoff_then_succeed(tmp_path, server, small_zip):
    url = server.serve("pets.zip", body=small_zip.read_bytes(), fail_first=2)
    got = download(Source(url=url), tmp_path / "dl", **{**FAST, "retries": 2})
    assert got.path.read_bytes() == small_zip.read_bytes()
    assert len(server.seen("pets.zip")) == 3


def test_server_errors_beyond_the_retries_report_the_status(tmp_path, server):
    url = server.serve("pets.zip", body=b"x", fail_first=10)
    with pytest.raises(CatdogError, match="HTTP 503"):
        download(Source(url=url), tmp_path / "dl", **{**FAST, "retries": 1})
    assert len(server.seen("pets.zip")) == 2


def test_unreachable_host_fails_quickly_with_cannot_reach(tmp_path):
    with socket.socket() as sock:  # a port that was just free: nothing listens on it now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(CatdogError, match=rf"cannot reach 127\.0\.0\.1:{port}"):
        download(Source(url=f"http://127.0.0.1:{port}/pets.zip"), tmp_path / "dl", **{**FAST, "retries": 2})
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path / "dl") == []


def test_stalled_server_times_out_after_the_retries(tmp_path, server):
    url = server.serve("slow.zip", hang=True)
    start = time.monotonic()
    with pytest.raises(CatdogError, match=r"failed after 2 attempts: .*timed out"):
        download(Source(url=url), tmp_path / "dl", timeout_s=0.3, retries=1, backoff_s=0.01)
    assert time.monotonic() - start < 5
    assert len(server.seen("slow.zip")) == 2


# --- resume ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("etag", ["auto", None], ids=["etag", "no-validators"])
def test_dropped_connection_is_resumed_with_a_range_request(tmp_path, server, payload, etag):
    """Within one fetch the retry continues the file even from a server that sends no ETag or Last-Modified."""
    half = len(payload) // 2 + 12345
    url = server.serve("big.bin", body=payload, drop_at=half, etag=etag)
    got = download(Source(url=url, sha256=sha256(payload)), tmp_path / "dl", **{**FAST, "retries": 2})
    assert got.sha256 == sha256(payload) and got.path.read_bytes() == payload
    first, second = server.seen("big.bin")
    assert "range" not in first
    assert second["range"] == f"bytes={half}-"  # continued where the first body stopped
    assert leftovers(tmp_path / "dl") == []


def test_server_that_ignores_range_still_ends_with_the_correct_file(tmp_path, server, payload):
    url = server.serve("big.bin", body=payload, drop_at=len(payload) // 2, ranges=False)
    got = download(Source(url=url, sha256=sha256(payload)), tmp_path / "dl", **{**FAST, "retries": 2})
    assert got.path.read_bytes() == payload and got.size == len(payload)
    assert [("range" in h) for h in server.seen("big.bin")] == [False, True]


def test_partial_response_for_the_wrong_range_is_not_appended(tmp_path, server, payload):
    url = server.serve("big.bin", body=payload, drop_at=MB, wrong_range=True)
    got = download(Source(url=url), tmp_path / "dl", **{**FAST, "retries": 1})  # no pin: only the range check saves it
    assert got.path.read_bytes() == payload and got.sha256 == sha256(payload)
    assert [h.get("range") for h in server.seen("big.bin")] == [None, f"bytes={MB}-", None]


def test_dropped_connection_without_retries_is_an_error_and_moves_nothing(tmp_path, server, payload):
    url = server.serve("big.bin", body=payload, drop_at=MB)
    with pytest.raises(CatdogError, match=r"failed after 1 attempt: "):
        download(Source(url=url), tmp_path / "dl", **FAST)
    assert not cached(tmp_path / "dl", url).exists() and not record_of(cached(tmp_path / "dl", url)).exists()


def interrupted_download(server: Server, dl: Path, name: str, body: bytes, drop_at: int = MB, **route) -> str:
    """A first run whose connection drops after `drop_at` bytes: it leaves `<name>.part` behind. Returns the URL."""
    url = server.serve(name, body=body, drop_at=drop_at, **route)
    with pytest.raises(CatdogError, match="failed after 1 attempt"):
        download(Source(url=url), dl, **FAST)
    assert Path(f"{cached(dl, url)}.part").stat().st_size == drop_at
    return url


@pytest.mark.parametrize(
    "validator",
    [pytest.param({}, id="etag"), pytest.param({"etag": None, "last_modified": "Tue, 01 Oct 2024 10:00:00 GMT"}, id="last-modified")],
)
def test_partial_file_from_an_earlier_run_is_resumed_if_unchanged(tmp_path, server, payload, validator):
    url = interrupted_download(server, tmp_path / "dl", "big.bin", payload, **validator)
    got = download(Source(url=url, sha256=sha256(payload)), tmp_path / "dl", **FAST)
    assert got.path.read_bytes() == payload
    second = server.seen("big.bin")[1]
    assert second["range"] == f"bytes={MB}-" and second["if-range"] in server.routes["/big.bin"].validators()
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [got.path.name, record_of(got.path).name]


def test_partial_of_a_file_that_changed_on_the_server_is_not_spliced(tmp_path, server, payload):
    url = interrupted_download(server, tmp_path / "dl", "big.bin", payload)
    new = os.urandom(len(payload))
    server.routes["/big.bin"].body = new  # same name, new content (and so a new ETag)
    got = download(Source(url=url), tmp_path / "dl", **FAST)  # no pin: only If-Range saves it
    assert got.path.read_bytes() == new and got.sha256 == sha256(new)
    assert server.seen("big.bin")[1]["range"] == f"bytes={MB}-"


def test_partial_from_an_earlier_run_without_validators_is_downloaded_from_the_start(tmp_path, server, payload):
    url = interrupted_download(server, tmp_path / "dl", "big.bin", payload, etag=None)
    new = os.urandom(len(payload))
    server.routes["/big.bin"].body = new  # the server may have changed the file since, and cannot say so
    got = download(Source(url=url), tmp_path / "dl", **FAST)
    assert got.path.read_bytes() == new
    assert "range" not in server.seen("big.bin")[1]


def test_partials_of_two_urls_that_end_alike_are_kept_apart(tmp_path, server, payload):
    first = interrupted_download(server, tmp_path / "dl", "v1/big.bin", payload)
    new = os.urandom(len(payload))
    second = server.serve("v2/big.bin", body=new)
    assert download(Source(url=second), tmp_path / "dl", **FAST).path.read_bytes() == new
    assert "range" not in server.seen("v2/big.bin")[0]
    got = download(Source(url=first, sha256=sha256(payload)), tmp_path / "dl", **FAST)
    assert got.path.read_bytes() == payload
    assert server.seen("v1/big.bin")[1]["range"] == f"bytes={MB}-"  # v1's partial was left alone, so it resumes


def test_stale_partial_longer_than_the_file_is_discarded(tmp_path, server, payload):
    longer = payload + os.urandom(2 * MB)
    url = interrupted_download(server, tmp_path / "dl", "big.bin", longer, drop_at=len(payload) + 10, etag='"same"')
    server.routes["/big.bin"].body = payload  # a server that keeps the ETag: If-Range cannot tell
    got = download(Source(url=url, sha256=sha256(payload)), tmp_path / "dl", **FAST)
    assert got.path.read_bytes() == payload
    assert [h.get("range") for h in server.seen("big.bin")] == [None, f"bytes={len(payload) + 10}-", None]


# --- extraction -----------------------------------------------------------------------------------------------------


def assert_rejected(archive: Path, dest: Path, match: str, **limits) -> str:
    """Extraction fails with a one-line 'archive rejected' error and leaves no target and no temporary folder."""
    with pytest.raises(CatdogError, match=match) as err:
        extract_archive(archive, dest, **{"max_bytes": 10 * MB, "max_files": 1000, **limits})
    assert "\n" not in str(err.value)
    assert not dest.exists()
    assert leftovers(dest.parent) == []
    return str(err.value)


def test_zip_extracts_into_place(tmp_path, small_zip):
    extract_archive(small_zip, tmp_path / "out" / "images", max_bytes=10 * MB, max_files=100)
    assert len(list((tmp_path / "out" / "images" / "pets").rglob("*.jpg"))) == 8
    assert leftovers(tmp_path / "out") == []


def test_tar_gz_extracts_into_place(tmp_path):
    files = {"pets/train/cats/cat.0.jpg": b"cat" * 100, "pets/train/dogs/dog.0.jpg": b"dog" * 100}
    archive = write(tmp_path / "pets.tar.gz", tar_bytes([(tar_entry(n), d) for n, d in files.items()], mode="w:gz"))
    extract_archive(archive, tmp_path / "images", max_bytes=MB, max_files=10)
    assert snapshot(tmp_path / "images") == files


def test_plain_tar_extracts_into_place(tmp_path):
    archive = write(tmp_path / "pets.tar", tar_bytes([(tar_entry("pets/a.jpg"), b"a")]))
    extract_archive(archive, tmp_path / "images", max_bytes=MB, max_files=10)
    assert snapshot(tmp_path / "images") == {"pets/a.jpg": b"a"}


def test_truncated_zip_is_rejected_as_corrupt(tmp_path, small_zip):
    data = small_zip.read_bytes()
    archive = write(tmp_path / "pets.zip", data[: len(data) // 2])
    assert_rejected(archive, tmp_path / "images", r"archive rejected: pets\.zip is corrupt or truncated")


def test_zip_with_a_damaged_member_is_rejected_as_corrupt(tmp_path):
    data = bytearray(zip_bytes({"pets/a.txt": b"hello world " * 1000}, zipfile.ZIP_STORED))
    data[200] ^= 0xFF  # inside the stored data: the CRC no longer matches
    archive = write(tmp_path / "pets.zip", bytes(data))
    assert_rejected(archive, tmp_path / "images", r"archive rejected: pets\.zip is corrupt or truncated")


def test_truncated_tar_gz_is_rejected_as_corrupt(tmp_path):
    data = tar_bytes([(tar_entry("pets/a.bin"), os.urandom(200_000))], mode="w:gz")
    archive = write(tmp_path / "pets.tar.gz", data[: len(data) // 2])
    assert_rejected(archive, tmp_path / "images", r"archive rejected: pets\.tar\.gz is corrupt or truncated")


def test_not_an_archive_is_a_clear_error(tmp_path):
    archive = write(tmp_path / "pets.zip", b"<html>Sorry, this page has moved</html>\n" * 40)
    assert_rejected(archive, tmp_path / "images", r"pets\.zip is not a zip or tar archive")


def test_plain_tar_whose_last_member_is_a_zip_extracts_as_a_tar(tmp_path):
    inner = zip_bytes({"inner/x.txt": b"x"})
    archive = write(tmp_path / "pets.tar", tar_bytes([(tar_entry("pets/a.jpg"), b"a"), (tar_entry("pets/extra.zip"), inner)]))
    extract_archive(archive, tmp_path / "images", max_bytes=MB, max_files=10)
    assert snapshot(tmp_path / "images") == {"pets/a.jpg": b"a", "pets/extra.zip": inner}


def test_zip_behind_a_prefix_still_extracts(tmp_path):
    archive = write(tmp_path / "pets.zip", b"#!/bin/sh\nexit 0\n" + zip_bytes({"pets/a.jpg": b"a"}))
    extract_archive(archive, tmp_path / "images", max_bytes=MB, max_files=10)
    assert snapshot(tmp_path / "images") == {"pets/a.jpg": b"a"}


@pytest.mark.parametrize(
    "cut",
    [
        pytest.param(1024, id="at-a-header"),
        pytest.param(1024 + 100, id="inside-a-header"),
        pytest.param(2048, id="before-the-end-marker"),
        pytest.param(2048 + 512, id="inside-the-end-marker"),
    ],
)
def test_plain_tar_cut_off_without_its_end_marker_is_rejected_as_truncated(tmp_path, cut):
    # Two members of 100 bytes: headers at 0 and 1024, data at 512 and 1536, end marker at 2048.
    data = tar_bytes([(tar_entry("pets/a.txt"), b"a" * 100), (tar_entry("pets/b.txt"), b"b" * 100)])
    archive = write(tmp_path / "pets.tar", data[:cut])
    assert_rejected(archive, tmp_path / "images", r"archive rejected: pets\.tar is corrupt or truncated")


def patch_zip(data: bytes, flags: int | None = None, method: int | None = None) -> bytes:
    """Set the flag bits or compression method of every entry, in its local header and central directory record."""
    out = bytearray(data)
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = out.find(signature)
        while start >= 0:
            if flags is not None:
                struct.pack_into("<H", out, start + flags_at, flags)
            if method is not None:
                struct.pack_into("<H", out, start + flags_at + 2, method)
            start = out.find(signature, start + 4)
    return bytes(out)


@pytest.mark.parametrize(
    ("patch", "match"),
    [
        pytest.param({"flags": 0x1}, "encrypted entries are not supported", id="encrypted"),
        pytest.param({"method": 9}, "unsupported compression method 9", id="deflate64"),
    ],
)
def test_zip_entry_that_cannot_be_read_is_rejected(tmp_path, patch, match):
    data = patch_zip(zip_bytes({"pets/a.txt": b"secret " * 10}, zipfile.ZIP_STORED), **patch)
    archive = write(tmp_path / "pets.zip", data)
    assert_rejected(archive, tmp_path / "images", rf"archive rejected: pets\.zip: {match} \('pets/a\.txt'\)")


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param({"ds/a": b"file", "ds/a/b": b"under a file"}, id="file-then-child"),
        pytest.param({"ds/a/b": b"child", "ds/a": b"file over a folder"}, id="child-then-file"),
        pytest.param({"ds/a": b"file", "ds/a/": b""}, id="file-then-folder"),
        pytest.param({".": b"the target itself"}, id="dot"),
    ],
)
def test_zip_with_conflicting_entries_is_rejected_as_the_archives_fault(tmp_path, entries):
    archive = write(tmp_path / "ds.zip", zip_bytes(entries))
    message = assert_rejected(archive, tmp_path / "images", r"archive rejected: ds\.zip has conflicting entries \(")
    assert "cannot extract" not in message and str(tmp_path) not in message


def test_tar_with_conflicting_entries_is_rejected_as_the_archives_fault(tmp_path):
    archive = write(tmp_path / "ds.tar", tar_bytes([(tar_entry("ds/a"), b"file"), (tar_entry("ds/a/b"), b"under a file")]))
    assert_rejected(archive, tmp_path / "images", r"archive rejected: ds\.tar has conflicting entries \(.*ds/a/b\)")


def test_disk_error_while_extracting_is_still_reported_as_the_disks(tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch_mod, "_extract_zip", disk_full)
    archive = write(tmp_path / "pets.zip", zip_bytes({"pets/a.jpg": b"a"}))
    with pytest.raises(CatdogError, match=r"^cannot extract pets\.zip into .*: No space left on device$"):
        extract_archive(archive, tmp_path / "images", max_bytes=MB, max_files=10)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("empty.zip", zip_bytes({}), id="zip"),
        pytest.param("empty.zip", zip_bytes({"pets/": b"", "pets/train/": b""}), id="zip-of-folders"),
        pytest.param("empty.tar", tar_bytes([]), id="tar"),
        pytest.param("empty.tar.gz", tar_bytes([(tar_entry("pets", tarfile.DIRTYPE), None)], mode="w:gz"), id="tar-gz-of-folders"),
    ],
)
def test_archive_with_no_files_is_rejected(tmp_path, name, data):
    archive = write(tmp_path / name, data)
    assert_rejected(archive, tmp_path / "images", rf"archive rejected: {name.replace('.', '[.]')} contains no files")


@pytest.mark.parametrize("name", ["../evil.txt", "pets/../../evil.txt", "..\\evil.txt"])
def test_zip_slip_with_parent_components_is_rejected(tmp_path, name):
    archive = write(tmp_path / "a" / "slip.zip", zip_bytes({"pets/ok.txt": b"ok", name: b"evil"}))
    assert_rejected(archive, tmp_path / "a" / "b" / "images", "archive rejected: path escapes the target")
    assert [p for p in tmp_path.rglob("evil*")] == []


def test_zip_with_an_absolute_path_is_rejected(tmp_path):
    outside = tmp_path / "outside" / "evil.txt"
    archive = write(tmp_path / "abs.zip", zip_bytes({"pets/ok.txt": b"ok", str(outside): b"evil"}))
    assert_rejected(archive, tmp_path / "images", "archive rejected: absolute path")
    assert not outside.exists() and not (tmp_path / "images").exists()


def test_zip_symlink_entry_is_rejected(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("pets/link")
        link.create_system, link.external_attr = 3, (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    archive = write(tmp_path / "link.zip", buf.getvalue())
    assert_rejected(archive, tmp_path / "images", "archive rejected: link entry")


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(("../evil.txt", tarfile.REGTYPE, ""), id="parent-path"),
        pytest.param(("/tmp/catdog-evil.txt", tarfile.REGTYPE, ""), id="absolute-path"),
        pytest.param(("pets/up", tarfile.SYMTYPE, "../../outside"), id="symlink-outside"),
        pytest.param(("pets/abs", tarfile.SYMTYPE, "/etc"), id="symlink-absolute"),
        pytest.param(("pets/hard", tarfile.LNKTYPE, "../outside/file"), id="hardlink-outside"),
        pytest.param(("pets/fifo", tarfile.FIFOTYPE, ""), id="fifo"),
        pytest.param(("pets/null", tarfile.CHRTYPE, ""), id="char-device"),
        pytest.param(("pets/disk", tarfile.BLKTYPE, ""), id="block-device"),
    ],
)
def test_unsafe_tar_entry_is_rejected_and_nothing_is_written_outside(tmp_path, member):
    name, kind, linkname = member
    outside = write(tmp_path / "outside" / "file", b"keep me")
    entries = [(tar_entry("pets/ok.txt"), b"ok"), (tar_entry(name, kind, linkname), b"evil" if kind == tarfile.REGTYPE else None)]
    if kind == tarfile.SYMTYPE:  # and try to write through the link
        entries.append((tar_entry(f"{name}/owned.txt"), b"evil"))
    archive = write(tmp_path / "work" / "unsafe.tar", tar_bytes(entries))
    assert_rejected(archive, tmp_path / "work" / "images", "archive rejected")
    assert outside.read_bytes() == b"keep me"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "outside/file", "work/unsafe.tar"
    ]
    assert not Path("/tmp/catdog-evil.txt").exists()


def test_zip_bomb_by_declared_uncompressed_size_is_rejected(tmp_path):
    bomb = zip_bytes({f"pets/zeros{i}.bin": bytes(3 * MB) for i in range(2)})  # 6 MiB of zeros, a few KiB zipped
    archive = write(tmp_path / "bomb.zip", bomb)
    assert archive.stat().st_size < 100_000
    message = assert_rejected(archive, tmp_path / "images", "archive rejected", max_bytes=5 * MB)
    assert str(6 * MB) in message and str(5 * MB) in message


def test_zip_bomb_by_entry_count_is_rejected(tmp_path):
    archive = write(tmp_path / "many.zip", zip_bytes({f"pets/{i}.txt": b"" for i in range(50)}))
    message = assert_rejected(archive, tmp_path / "images", "archive rejected", max_files=20)
    assert "50 entries" in message and "20" in message


def test_tar_bomb_by_size_and_by_count_is_rejected(tmp_path):
    big = write(tmp_path / "big.tar.gz", tar_bytes([(tar_entry("pets/zeros.bin"), bytes(2 * MB))], mode="w:gz"))
    assert_rejected(big, tmp_path / "images", "uncompressed bytes exceed", max_bytes=MB)
    many = write(tmp_path / "many.tar", tar_bytes([(tar_entry(f"pets/{i}"), b"") for i in range(30)]))
    assert_rejected(many, tmp_path / "images", "30 entries exceed", max_files=10)


# --- the whole stage: previous data survives a failed or interrupted fetch ------------------------------------------


@pytest.fixture
def fetched(tmp_path, small_zip):
    """A completed fetch of the small zip from a local path: (params, snapshot of the dataset folder)."""
    weights = write(tmp_path / "src" / "weights.h5", b"weights")
    params = fetch_params(str(small_zip), str(weights))
    dataset, w = fetch(params, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert (tmp_path / "w.h5").read_bytes() == b"weights" and w.size == 7
    assert dataset.sha256 == sha256(small_zip.read_bytes())
    return params, snapshot(tmp_path / "images")


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(b"not an archive at all", id="not-an-archive"),
        pytest.param(zip_bytes({"pets/ok.txt": b"ok", "../evil.txt": b"evil"}), id="zip-slip"),
        pytest.param(zip_bytes({"pets/zeros.bin": bytes(2 * MB)}), id="zip-bomb"),
        pytest.param(zip_bytes({}), id="empty-zip"),
        pytest.param(tar_bytes([]), id="empty-tar"),
    ],
)
def test_failed_fetch_leaves_the_previous_dataset_untouched(tmp_path, fetched, archive):
    params, before = fetched
    bad = write(tmp_path / "src" / "bad.zip", archive)
    with pytest.raises(CatdogError):
        changed = params.model_copy(update={"dataset": Source(url=str(bad)), "max_bytes": MB})
        fetch(changed, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert snapshot(tmp_path / "images") == before
    assert leftovers(tmp_path) == []


def test_corrupt_download_is_dropped_from_the_cache_so_a_rerun_fetches_it_again(tmp_path, server, fetched, small_zip):
    params, before = fetched
    data = small_zip.read_bytes()
    url = server.serve("pets2.zip", body=data[: len(data) // 2])
    changed = params.model_copy(update={"dataset": Source(url=url)})
    with pytest.raises(CatdogError, match=r"pets2\.zip is corrupt or truncated"):
        fetch(changed, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert snapshot(tmp_path / "images") == before
    assert not cached(tmp_path / "dl", url).exists() and not record_of(cached(tmp_path / "dl", url)).exists()

    server.routes["/pets2.zip"].body = data  # the server is fixed: the rerun downloads afresh and succeeds
    dataset, _ = fetch(changed, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert dataset.sha256 == sha256(data) and len(server.seen("pets2.zip")) == 2


def test_corrupt_local_source_inside_the_download_folder_is_never_deleted(tmp_path, fetched):
    params, before = fetched
    own = write(tmp_path / "dl" / "mine.zip", b"PK\x03\x04" + b"garbage" * 100)
    with pytest.raises(CatdogError, match=r"mine\.zip is corrupt or truncated"):
        fetch(params.model_copy(update={"dataset": Source(url=str(own))}), tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert own.read_bytes() == b"PK\x03\x04" + b"garbage" * 100
    assert snapshot(tmp_path / "images") == before


def test_unreachable_source_leaves_the_previous_dataset_untouched(tmp_path, fetched):
    params, before = fetched
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    update = {"dataset": Source(url=f"http://127.0.0.1:{port}/pets2.zip")}
    with pytest.raises(CatdogError, match="cannot reach"):
        fetch(params.model_copy(update=update), tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert snapshot(tmp_path / "images") == before


def test_interrupted_extraction_leaves_the_previous_dataset_untouched(tmp_path, fetched, monkeypatch):
    params, before = fetched
    other = write(tmp_path / "src" / "other.zip", zip_bytes({f"other/{i}.txt": b"x" * 1000 for i in range(10)}))
    real_extract = fetch_mod._extract_zip

    def extract_then_interrupt(archive, target, max_bytes, max_files):
        real_extract(archive, target, max_bytes, max_files)
        assert (target / "other" / "9.txt").exists()  # the new tree is written in full, but not yet swapped in
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod, "_extract_zip", extract_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        changed = params.model_copy(update={"dataset": Source(url=str(other))})
        fetch(changed, tmp_path / "images", tmp_path / "w.h5", tmp_path / "dl")
    assert snapshot(tmp_path / "images") == before
    assert leftovers(tmp_path) == []


# --- the command line -----------------------------------------------------------------------------------------------


def test_cli_fetch_error_is_one_line_with_exit_code_1(tmp_path, server):
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    weights = write(tmp_path / "weights.h5", b"weights")
    write_params(tmp_path, {"fetch": {"dataset": {"url": f"{server.base}/gone.zip", "sha256": None},
                                      "weights": {"url": str(weights), "sha256": None}, "retries": 0}})
    result = catdog(
        "fetch", "--params", tmp_path / "params.yaml", "--dataset-out", tmp_path / "images",
        "--weights-out", tmp_path / "w.h5", "--downloads", tmp_path / "dl", cwd=tmp_path, check=False, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: HTTP 404"), result.stderr
    assert "gone.zip" in lines[0] and "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "images").exists() and not (tmp_path / "w.h5").exists()


def test_chained_tar_links_inside_the_target_cannot_redirect_a_write_outside(tmp_path):
    # Each link alone stays inside, but together a/l resolves to the target's parent.
    entries = [
        (tar_entry("a", tarfile.SYMTYPE, "."), None),
        (tar_entry("a/l", tarfile.SYMTYPE, ".."), None),
        (tar_entry("a/l/escaped.txt"), b"evil"),
    ]
    archive = write(tmp_path / "work" / "chain.tar", tar_bytes(entries))
    assert_rejected(archive, tmp_path / "work" / "images", "archive rejected: link entry")
    assert not (tmp_path / "work" / "escaped.txt").exists()
