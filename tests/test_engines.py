"""The local engine's decoding: on threads, or screened on processes first; files read whole or streamed; same rows."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from catdog.images import ImageError, load_image
from catdog.labeling import engines, sources
from catdog.labeling.engines import FileDecoder, decode, decode_ahead
from catdog.labeling.sources import LocalSource
from conftest import catdog, cli_env, make_image

JPEG_HEADER_AND_JUNK = b"\xff\xd8\xff\xe0" + bytes(range(7, 67))  # how benchmarks/scale_out.py makes broken files


def broken_files(folder: Path) -> dict[str, bytes]:
    """One file of every kind of broken the error column tells apart, and two good images."""
    make_image(folder / "good.jpg", size=(60, 40))
    make_image(folder / "good.png", size=(20, 30))
    whole = make_image(folder / "big" / "whole.jpg", size=(300, 200)).read_bytes()
    (folder / "big" / "whole.jpg").unlink()
    (folder / "big").rmdir()
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    kinds = {
        "empty.jpg": b"",
        "text.jpg": b"hello, I am a text file",
        "junk-after-header.jpg": JPEG_HEADER_AND_JUNK,
        "short-header.jpg": b"\xff\xd8\xff",
        "truncated.jpg": whole[: len(whole) // 2],
        "png-header-only.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
        "gif-header-only.gif": b"GIF89a\x10\x00",
        "drawing.eps": eps,
    }
    for name, data in kinds.items():
        (folder / name).write_bytes(data)
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # tiny file, 400 Mpx
    return kinds


def test_every_kind_of_broken_file_gets_the_same_reason_read_whole_or_streamed(tmp_path, monkeypatch):
    broken_files(tmp_path)
    source = LocalSource(str(tmp_path))
    names = source.list().paths
    whole = [decode(source, rel, None, 8, 50_000_000) for rel in names]
    monkeypatch.setattr(sources, "READ_WHOLE_BYTES", -1)  # every file streamed, as before files were read whole
    with source.opened("good.jpg") as data:
        assert not isinstance(data, bytes)
    streamed = [decode(source, rel, None, 8, 50_000_000) for rel in names]

    def by_path(rel: str):
        try:
            return load_image(tmp_path / rel, 8, 50_000_000)
        except ImageError as exc:
            return str(exc)

    reasons = [r if isinstance(r, str) else "ok" for r in whole]
    assert reasons == [r if isinstance(r, str) else "ok" for r in streamed]
    assert reasons == [r if isinstance(r, str) else "ok" for r in map(by_path, names)]
    reason = dict(zip(names, reasons))
    assert reason["good.jpg"] == reason["good.png"] == "ok"
    assert reason["empty.jpg"] == "empty file"
    assert reason["text.jpg"] == reason["short-header.jpg"] == "not an image (unrecognized format)"
    assert reason["drawing.eps"] == "unsupported format: EPS"
    assert reason["bomb.png"] == "image too large: 20000x20000 pixels exceeds the limit of 50000000"
    for name in ("junk-after-header.jpg", "truncated.jpg", "png-header-only.png", "gif-header-only.gif"):
        assert reason[name].startswith(("corrupt or truncated image: ", "not an image")), (name, reason[name])
    assert all((a == b).all() for a, b in zip(whole, streamed) if not isinstance(a, str))
    screened = [FileDecoder(source, {}, 8, 50_000_000).screen(rel) for rel in names]
    assert screened[names.index("truncated.jpg")] is None  # its header is sound: the decode finds it truncated
    assert [r if s is None else s for r, s in zip(reasons, screened)] == reasons
    assert [s for r, s in zip(reasons, screened) if r == "ok"] == [None, None]


def test_a_file_that_grows_after_it_was_sized_is_read_to_its_end(tmp_path):
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(path, "ab") as fh:
            fh.write(b"y" * 3_000_000)
        assert sources._read_whole(fd, 10) == b"x" * 10 + b"y" * 3_000_000
    finally:
        os.close(fd)


def _decoded_here(key: int) -> str:
    return f"{key} decoded in {os.getpid()}"


def _odd_refused(key: int) -> str | None:
    return f"{key} refused in {os.getpid()}" if key % 2 else None


def test_screening_processes_refuse_files_ahead_of_the_decoding_threads_in_order(monkeypatch):
    monkeypatch.setattr(engines, "PROCESS_MIN_FILES", 100)
    keys = list(range(1000))
    batches = list(decode_ahead(keys, _decoded_here, batch_size=7, workers=2, screen=_odd_refused))
    assert [list(k) for k, _ in batches] == [keys[i : i + 7] for i in range(0, 1000, 7)]
    decoded = [d.split() for _, ds in batches for d in ds]
    assert [int(d[0]) for d in decoded] == keys
    assert all(d[1] == ("refused" if int(d[0]) % 2 else "decoded") for d in decoded)
    here = str(os.getpid())
    assert {d[3] for d in decoded if d[1] == "decoded"} == {here}
    # On processes of their own, at most `workers` (the pool starts a second only while the first is busy).
    assert {d[3] for d in decoded if d[1] == "refused"} & {here} == set()
    assert 1 <= len({d[3] for d in decoded if d[1] == "refused"}) <= 2


def _dies_at_500(key: int) -> str | None:
    if key == 500:
        os._exit(1)
    return None


def test_a_screening_process_that_dies_leaves_the_threads_to_decode_every_file(monkeypatch):
    monkeypatch.setattr(engines, "PROCESS_MIN_FILES", 100)
    decoded = [d for _, ds in decode_ahead(range(2000), _decoded_here, 7, 2, screen=_dies_at_500) for d in ds]
    assert decoded == [_decoded_here(k) for k in range(2000)]


@pytest.mark.parametrize("files, workers, screen", [(99, 2, _odd_refused), (100, 1, _odd_refused), (100, 2, None)])
def test_few_files_one_worker_or_no_screen_decode_every_file_on_threads(monkeypatch, files, workers, screen):
    monkeypatch.setattr(engines, "PROCESS_MIN_FILES", 100)
    decoded = [d for _, ds in decode_ahead(range(files), _decoded_here, 8, workers, screen) for d in ds]
    assert decoded == [_decoded_here(k) for k in range(files)]


def test_screening_processes_write_the_csv_threads_write(tiny_bundle, tmp_path, monkeypatch):
    from catdog.labeling.predict import PredictOptions, predict

    folder = tmp_path / "in"
    broken_files(folder)
    for i in range(40):
        (folder / "many" / f"{i:03d}.jpg").parent.mkdir(exist_ok=True)
        (folder / "many" / f"{i:03d}.jpg").write_bytes(JPEG_HEADER_AND_JUNK if i % 3 else b"")
        make_image(folder / "photos" / f"{i:03d}.jpg", seed=i)
    started = []

    class Pool(engines.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(kwargs["max_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engines, "ProcessPoolExecutor", Pool)
    predict(PredictOptions(str(folder), tiny_bundle, tmp_path / "threads.csv", batch_size=5, workers=1))
    assert started == []
    monkeypatch.setattr(engines, "PROCESS_MIN_FILES", 50)
    predict(PredictOptions(str(folder), tiny_bundle, tmp_path / "processes.csv", batch_size=5, workers=2))
    assert started == [2]
    assert (tmp_path / "processes.csv").read_bytes() == (tmp_path / "threads.csv").read_bytes()


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                if int(fh.read().rsplit(b")", 1)[1].split()[1]) == pid:
                    found.add(int(entry))
        except (ValueError, OSError, IndexError):
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the screening processes")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_run_on_screening_processes_stopped_mid_way_leaves_none_behind_and_resumes_to_the_same_csv(tiny_bundle, tmp_path, sig):
    folder = tmp_path / "many"
    for i in range(engines.PROCESS_MIN_FILES + 100):
        if i % 1000 == 0:
            (folder / f"{i // 1000}").mkdir(parents=True)
        (folder / f"{i // 1000}" / f"{i:05d}.jpg").write_bytes(JPEG_HEADER_AND_JUNK)
    for i in range(20):
        make_image(folder / "photos" / f"{i:02d}.jpg", seed=i)
    out = tmp_path / "labels.csv"
    progress = tmp_path / "labels.csv.progress.json"
    args = [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(tiny_bundle), "--out", str(out),
            "--batch-size", "1", "--workers", "2"]
    env = {**cli_env(), "CATDOG_PROGRESS_SECONDS": "0"}  # progress saved after every batch: the run takes a while
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not progress.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    workers = _children(proc.pid)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=60)[1]
    assert len(workers) >= 2, "the run screens on processes"
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr
        assert "Traceback" not in stderr
        assert stderr.rstrip().splitlines()[-1] == f"interrupted: progress kept in {progress}; rerun with --resume to continue"
    else:
        assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a screening process outlived its run"
    assert not out.exists() and json.loads(progress.read_text())["bytes"] > 0

    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, "--resume", "--workers", "2")
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", tmp_path / "straight.csv", "--workers", "1")
    assert out.read_bytes() == (tmp_path / "straight.csv").read_bytes()
