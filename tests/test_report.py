"""`catdog report`: the streaming summary of a labels CSV, the page it writes, and that page in a real Chromium."""

from __future__ import annotations

import csv
import heapq
import html
import json
import os
import re
import shutil
import sys
import zipfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from catdog.errors import CatdogError
from catdog.images import load_thumbnail
from catdog.labeling.jobrecord import JobRecord, file_sha256, write_job_record
from catdog.labeling.report import (
    ERROR_PATHS,
    MAX_REASONS,
    ReportOptions,
    Selection,
    histogram_svg,
    summarize_labels,
    write_report,
)
import conftest
from conftest import RealDataset, aws_free_env, catdog, make_image, missing_input, moto_s3, run

HEADER = "path,label,p_dog,pet_score,status,error\r\n"
HOSTILE = "<img src=x onerror=alert(1)>.jpg"


def write_labels(path: Path, rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(("path", "label", "p_dog", "pet_score", "status", "error"))
        writer.writerows(sorted(rows))
    return path


def ok(path: str, p: float, threshold: float = 0.5) -> tuple[str, str, str, str, str, str]:
    return (path, "dog" if p >= threshold else "cat", f"{p:.6f}", "", "ok", "")


def err(path: str, reason: str) -> tuple[str, str, str, str, str, str]:
    return (path, "", "", "", "error", reason)


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text outside tags."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


# --- the streaming summary -------------------------------------------------------------------------------

N_ROWS = 1_000_000
REASONS = ("empty file", "not an image (unrecognized format)", "corrupt or truncated image: broken data stream")


def _million_row(i: int) -> tuple[str, float | None, str]:
    """Row i of the generated CSV: (path, p_dog or None for an error, reason). Paths sort in row order."""
    path = f"d{i // 1000:04d}/img{i:07d}.jpg"
    if i % 50 == 0:  # 20,000 errors: three common reasons and, every 500th row, a reason of its own
        return path, None, f"odd reason {i}" if i % 500 == 0 else REASONS[(i // 50) % 3]
    return path, (i * 7919 % 1_000_003) / 1_000_003, ""


def _write_million(path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER)
        lines = []
        for i in range(N_ROWS):
            rel, p, reason = _million_row(i)
            if p is None:
                lines.append(f"{rel},,,,error,{reason}\r\n")
            else:
                printed = f"{p:.6f}"
                lines.append(f"{rel},{'dog' if float(printed) >= 0.5 else 'cat'},{printed},,ok,\r\n")
            if len(lines) == 50_000:
                fh.write("".join(lines))
                lines.clear()
        fh.write("".join(lines))


# Summarizes a CSV in a fresh interpreter and reports its peak RSS. (RSS, not tracemalloc: tracing every
# allocation made this pass 20x slower here, ~110 s for a million rows.)
SUMMARIZE = """
import dataclasses, json, resource, sys, time
from pathlib import Path
from catdog.labeling.report import Selection, summarize_labels
started = time.perf_counter()
summary = summarize_labels(Path(sys.argv[1]), Selection(threshold=0.5, n_uncertain=96, n_sample=72, seed=0, positive="dog"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({"peak": peak, "seconds": time.perf_counter() - started, "summary": dataclasses.asdict(summary)}))
"""


def _summarize_in_a_fresh_process(labels: Path) -> tuple[int, float, SimpleNamespace]:
    done = run([sys.executable, "-c", SUMMARIZE, str(labels)], timeout=300)
    got = json.loads(done.stdout)
    raw = got["summary"]
    summary = SimpleNamespace(
        **{**raw, "uncertain": [SimpleNamespace(**r) for r in raw["uncertain"]],
           "samples": {k: [SimpleNamespace(**r) for r in v] for k, v in raw["samples"].items()},
           "labels": {k: SimpleNamespace(**v) for k, v in raw["labels"].items()},
           "reasons": {k: SimpleNamespace(**v) for k, v in raw["reasons"].items()}}
    )
    return got["peak"], got["seconds"], summary


def test_a_million_row_csv_is_summarized_in_bounded_memory(tmp_path):
    labels = tmp_path / "labels.csv"
    _write_million(labels)
    small = tmp_path / "small.csv"
    with open(labels, "rb") as fh, open(small, "wb") as out:
        out.writelines(line for _, line in zip(range(1001), fh))
    baseline, _, _ = _summarize_in_a_fresh_process(small)
    peak, seconds, summary = _summarize_in_a_fresh_process(labels)
    print(f"1,000 rows: peak RSS {baseline / 2**20:.1f} MiB; 1,000,000 rows: {peak / 2**20:.1f} MiB in {seconds:.1f}s")
    # Measured: no growth (66.1 MiB both). Holding the rows as objects would take hundreds of
    # MiB, their paths alone about 70.
    assert peak - baseline < 16 * 2**20

    n_errors = N_ROWS // 50
    assert summary.rows == N_ROWS
    assert summary.statuses == {"ok": N_ROWS - n_errors, "error": n_errors}
    assert sum(summary.histogram) == N_ROWS - n_errors
    assert sum(s.count for s in summary.labels.values()) == N_ROWS - n_errors
    assert summary.disagreements == 0
    expected_uncertain = heapq.nsmallest(
        96, ((round(abs(float(f"{p:.6f}") - 0.5), 9), rel) for rel, p, _ in map(_million_row, range(N_ROWS)) if p is not None)
    )
    assert [r.path for r in summary.uncertain] == [rel for _, rel in expected_uncertain]
    for label, sample in summary.samples.items():
        assert len(sample) == 72 and len({r.path for r in sample}) == 72
        assert all(r.label == label for r in sample)
        assert [r.path for r in sample] == sorted(r.path for r in sample)
    # The first MAX_REASONS distinct reasons are listed (the three common ones and the first 97 odd ones),
    # each with its first ERROR_PATHS paths; errors with later reasons are counted together.
    assert len(summary.reasons) == MAX_REASONS
    assert summary.reasons["empty file"].count == sum(1 for i in range(0, N_ROWS, 50) if i % 500 and (i // 50) % 3 == 0)
    assert summary.reasons["empty file"].paths[:2] == ["d0000/img0000150.jpg", "d0000/img0000300.jpg"]
    assert all(len(s.paths) == min(s.count, ERROR_PATHS) for s in summary.reasons.values())
    assert summary.other_errors == N_ROWS // 500 - (MAX_REASONS - 3)
    assert sum(s.count for s in summary.reasons.values()) + summary.other_errors == n_errors


def test_uncertain_rows_are_nearest_the_threshold_with_ties_to_the_smaller_path(tmp_path):
    rows = [ok("b.jpg", 0.45), ok("a.jpg", 0.55), ok("c.jpg", 0.5), ok("d.jpg", 0.9), ok("e.jpg", 0.45), ok("f.jpg", 0.1)]
    labels = write_labels(tmp_path / "labels.csv", rows)
    summary = summarize_labels(labels, Selection(threshold=0.5, n_uncertain=3, n_sample=0))
    assert [r.path for r in summary.uncertain] == ["c.jpg", "a.jpg", "b.jpg"]
    summary = summarize_labels(labels, Selection(threshold=0.9, n_uncertain=2, n_sample=0))
    assert [r.path for r in summary.uncertain] == ["d.jpg", "a.jpg"]


def test_sample_per_label_is_seeded_and_spread_over_the_whole_csv(tmp_path):
    labels = write_labels(tmp_path / "labels.csv", [ok(f"{i:05d}.jpg", 0.2 if i % 2 else 0.8) for i in range(10_000)])

    def sample(seed: int) -> dict[str, list[str]]:
        summary = summarize_labels(labels, Selection(threshold=0.5, n_uncertain=0, n_sample=50, seed=seed))
        return {label: [r.path for r in rows] for label, rows in summary.samples.items()}

    first = sample(0)
    assert first == sample(0)
    assert first != sample(1)
    assert sorted(first) == ["cat", "dog"]
    for paths in first.values():
        indexes = [int(p[:5]) for p in paths]
        assert len(set(indexes)) == 50
        assert min(indexes) < 2_000 and max(indexes) > 8_000  # not just the first rows


def test_disagreements_with_the_threshold_are_counted(tmp_path):
    labels = write_labels(tmp_path / "labels.csv", [ok("a.jpg", 0.3), ok("b.jpg", 0.6), ok("c.jpg", 0.45, threshold=0.4)])
    assert summarize_labels(labels, Selection(0.5, 0, 0, positive="dog")).disagreements == 1
    assert summarize_labels(labels, Selection(0.5, 0, 0)).disagreements is None


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty: not a catdog labels CSV"),
        ("path,label\r\na.jpg,cat\r\n", "line 1: not a catdog labels CSV: the header is 'path,label'"),
        (HEADER + "a.jpg,cat,0.1,,ok\r\n", "line 2: expected 6 fields, found 5"),
        (HEADER + "a.jpg,cat,0.1,,ok,\r\nb.jpg,cat,1.5,,ok,\r\n", "line 3: p_dog '1.5' is not a number from 0 to 1"),
        (HEADER + "a.jpg,cat,nan,,ok,\r\n", "line 2: p_dog 'nan' is not a number from 0 to 1"),
        (HEADER + "a.jpg,cat,0.1,1.2,ok,\r\n", "line 2: pet_score '1.2' is not a number from 0 to 1"),
        (HEADER + "a.jpg,,0.1,,ok,\r\n", "line 2: a row with status ok has no label"),
        (HEADER + "a.jpg,cat,0.1,,skipped,\r\n", "line 2: status 'skipped' is neither ok nor error"),
        (HEADER + "a.jpg,cat,0.1,,ok,\r\nb.jpg,dog,0.9,,ok,\r\nc.jpg,bird,0.5,,ok,\r\n", "line 4: label 'bird' is not one of cat, dog, neither"),
        (HEADER + "n.jpg,neither,0.9,,ok,\r\n", "line 2: a neither row has no pet_score"),
        (HEADER + "a.jpg,cat,0.1,,ok,broken\r\n", "line 2: a row with status ok has an error"),
        (HEADER + "a.jpg,cat,,,error,broken\r\n", "line 2: a row with status error has a label or a score"),
        (HEADER + "a.jpg,,,0.5,error,broken\r\n", "line 2: a row with status error has a label or a score"),
        (HEADER + "a.jpg,cat,0.1,,ok,\r\nb.jpg,cat,0.2,,ok,\r\nb.jpg,cat,0.2,,ok,\r\n", "line 4: 'b.jpg' repeats the path of line 3"),
        (HEADER + "b.jpg,cat,0.1,,ok,\r\na.jpg,cat,0.2,,ok,\r\n", "line 3: 'a.jpg' sorts before line 2"),
        (HEADER + ',cat,0.1,,ok,\r\n', "line 2: empty path"),
    ],
)
def test_a_file_that_is_not_a_labels_csv_is_refused_naming_the_line(tmp_path, content, message):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(content.encode())
    with pytest.raises(CatdogError, match=re.escape(f"{labels}") + ".*" + re.escape(message)):
        summarize_labels(labels, Selection(0.5, 4, 4))


def test_histogram_marks_the_threshold_and_titles_every_bin():
    svg = histogram_svg([5, 0, 1000] + [0] * 17, threshold=0.37)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "threshold 0.370" in svg
    assert svg.count("<rect") == 20
    assert "<title>p_dog 0.10-0.15: 1,000 images</title>" in svg
    line = re.search(r'<line x1="([\d.]+)"[^>]*stroke="#c0392b"', svg)
    assert line and abs(float(line.group(1)) - (56 + (640 - 68) * 0.37)) < 0.1


# --- thumbnails ------------------------------------------------------------------------------------------


def test_thumbnail_keeps_the_aspect_ratio_and_applies_exif_orientation(tmp_path):
    path = make_image(tmp_path / "wide.jpg", size=(400, 100))
    with Image.open(path) as im:
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90 degrees when shown
        im.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_thumbnail(path, 160).size == (160, 40)
    assert load_thumbnail(tmp_path / "rotated.jpg", 160).size == (40, 160)
    assert load_thumbnail(make_image(tmp_path / "small.png", size=(30, 20)), 160).size == (30, 20)  # never enlarged
    assert load_thumbnail(make_image(tmp_path / "a.png", size=(50, 50), mode="RGBA"), 32).mode == "RGB"


# --- the page --------------------------------------------------------------------------------------------


@pytest.fixture
def small_run(tmp_path) -> tuple[Path, Path]:
    """A folder of tiny images with a CSV as predict-folder would write it: a hostile name, a broken file,
    a file gone since labeling and a path that points outside the folder."""
    photos = tmp_path / "photos"
    for name, color in ((HOSTILE, (200, 60, 40)), ("cat.jpg", (190, 70, 50)), ("dog.png", (50, 80, 190)), ("new\nline.jpg", (90, 90, 90))):
        make_image(photos / name, color=color)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    rows = [
        ok(HOSTILE, 0.48), ok("cat.jpg", 0.1), ok("dog.png", 0.93), ok("new\nline.jpg", 0.51), ok("gone.jpg", 0.3),
        ok("../outside.jpg", 0.6), err("broken.jpg", "corrupt or truncated image: broken data stream"),
        err('a "quoted" & <b>bold</b>.jpg', "not an image (unrecognized format)"),
    ]
    return photos, write_labels(tmp_path / "labels.csv", rows)


def test_page_escapes_names_and_shows_unreadable_files_as_placeholders(small_run, tmp_path):
    photos, labels = small_run
    out = tmp_path / "report.html"
    result = write_report(labels, str(photos), out, ReportOptions())
    assert (result.rows, result.ok, result.error, result.shown, result.unreadable) == (8, 6, 2, 6, 2)
    page = out.read_text(encoding="utf-8")
    tags = parse(page)
    assert not [t for t, _ in tags.tags if t == "script"]
    assert not [(t, a) for t, a in tags.tags if any(name.startswith("on") for name in a)]
    images = [a for t, a in tags.tags if t == "img"]
    assert all(a["src"].startswith("data:image/jpeg;base64,") for a in images)  # each image in the uncertain grid and a sample
    assert {a["alt"] for a in images} == {HOSTILE, "cat.jpg", "dog.png", "new\\nline.jpg"}
    text = "".join(tags.text)
    assert HOSTILE in text and "new\\nline.jpg" in text and 'a "quoted" & <b>bold</b>.jpg' in text
    assert "file not found" in text and "not a relative path inside the images source" in text
    assert "<b>bold</b>" not in page and html.escape(HOSTILE) in page


def test_threshold_and_model_name_come_from_the_models_meta_json(small_run, tmp_path):
    photos, labels = small_run
    model = tmp_path / "models"
    model.mkdir()
    (model / "meta.json").write_text(json.dumps({"classes": ["cat", "dog"], "image_size": 32, "threshold": 0.25, "model": "small_cnn"}))
    write_report(labels, str(photos), tmp_path / "m.html", ReportOptions(model=model))
    page = (tmp_path / "m.html").read_text(encoding="utf-8")
    assert "threshold 0.250" in page and "(small_cnn)" in page and "the model&#x27;s, from its meta.json" in page
    assert 'id="disagreements">2 labels disagree' in page  # 0.48 and 0.3 say cat; at 0.25 they are dogs
    write_report(labels, str(photos), tmp_path / "t.html", ReportOptions(model=model, threshold=0.7))
    assert "threshold 0.700" in (tmp_path / "t.html").read_text(encoding="utf-8")


def test_threshold_comes_from_a_sharded_runs_job_record_while_it_describes_the_csv(small_run, tmp_path):
    photos, labels = small_run
    record = JobRecord(
        source=str(photos), model="sha256:" + "0" * 64, threshold=0.3, shard=(0, 2), recursive=True, rows=8,
        csv_sha256=file_sha256(labels), listing="0" * 32,
    )
    write_job_record(labels, record)
    write_report(labels, str(photos), tmp_path / "r.html", ReportOptions())
    assert "0.3000 <span class=\"note\">(the one the labeling run used, from labels.csv.job.json)" in (tmp_path / "r.html").read_text()
    with open(labels, "a", newline="") as fh:
        fh.write("zz.jpg,,,,error,empty file\r\n")  # changed since its run: the record no longer describes it
    write_report(labels, str(photos), tmp_path / "r.html", ReportOptions(overwrite=True))
    assert "0.5000 <span class=\"note\">(the default" in (tmp_path / "r.html").read_text()


def test_same_csv_and_seed_give_the_same_page(small_run, tmp_path):
    photos, labels = small_run
    write_report(labels, str(photos), tmp_path / "a.html", ReportOptions(seed=3))
    write_report(labels, str(photos), tmp_path / "b.html", ReportOptions(seed=3))
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_max_images_bounds_the_thumbnails_decoded(tmp_path):
    photos = tmp_path / "photos"
    rows = []
    for i in range(60):
        make_image(photos / f"{i:02d}.png", size=(8, 8), seed=i)
        rows.append(ok(f"{i:02d}.png", i / 60))
    labels = write_labels(tmp_path / "labels.csv", rows)
    result = write_report(labels, str(photos), tmp_path / "r.html", ReportOptions(max_images=10))
    assert result.shown <= 10
    tags = parse((tmp_path / "r.html").read_text(encoding="utf-8")).tags
    assert len({a["alt"] for t, a in tags if t == "img"}) == result.shown  # an image may be in two grids, decoded once
    result = write_report(labels, str(photos), tmp_path / "none.html", ReportOptions(max_images=0))
    assert result.shown == 0


def test_report_command_refuses_to_replace_a_file_without_overwrite(small_run, tmp_path):
    photos, labels = small_run
    out = tmp_path / "report.html"
    out.write_text("keep me")
    result = catdog("report", labels, "--images", photos, "--out", out, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {out} already exists; pass --overwrite to replace it"
    assert out.read_text() == "keep me"
    result = catdog("report", labels, "--images", photos, "--out", out, "--overwrite")
    assert "report of 8 rows (6 ok, 2 error), 6 images shown, 2 of them unreadable now" in result.stderr
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.html")]  # no temp file left


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "{tmp}/nowhere"], "error: images folder not found: {tmp}/nowhere"),
        (["--images", "{tmp}/photos", "--model", "{tmp}/nomodel"], "error: model not found: {tmp}/nomodel"),
        (["--images", "{tmp}/photos", "--threshold", "1.5"], "error: --threshold 1.5: choose a value between 0 and 1"),
        (["--images", "{tmp}/labels.csv"], "error: --images {tmp}/labels.csv is a file, not a folder: give the folder the CSV was made from"),
    ],
)
def test_report_command_bad_input_is_a_one_line_error(small_run, tmp_path, args, message):
    _, labels = small_run
    result = catdog("report", labels, *[a.format(tmp=tmp_path) for a in args], "--out", tmp_path / "r.html", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == message.format(tmp=tmp_path)
    assert not (tmp_path / "r.html").exists()


def test_report_refuses_to_write_over_the_labels_csv(small_run):
    photos, labels = small_run
    with pytest.raises(CatdogError, match="is the labels CSV itself"):
        write_report(labels, str(photos), labels, ReportOptions(overwrite=True))


def test_an_s3_prefix_gives_the_same_page_as_the_local_folder(small_run, tmp_path):
    photos, labels = small_run
    (photos / "new\nline.jpg").unlink()  # moto cannot store a key with a newline; gone from both sources instead
    with moto_s3() as (url, client):
        client.create_bucket(Bucket="photos")
        for path in photos.iterdir():
            client.put_object(Bucket="photos", Key=f"batch/{path.name}", Body=path.read_bytes())
        env = aws_free_env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
        result = catdog(
            "report", labels, "--images", "s3://photos/batch", "--s3-endpoint-url", url, "--out", tmp_path / "s3.html", env=env,
        )
    assert "6 images shown, 3 of them unreadable now" in result.stderr  # a missing object is "file not found" too
    catdog("report", labels, "--images", photos, "--out", tmp_path / "local.html")
    local = (tmp_path / "local.html").read_text(encoding="utf-8").replace(html.escape(str(photos)), "SOURCE")
    assert (tmp_path / "s3.html").read_text(encoding="utf-8").replace("s3://photos/batch", "SOURCE") == local


# --- in a real browser -----------------------------------------------------------------------------------

HOSTILE_COPIES = {
    HOSTILE: 0,
    'a&b "double" \'single\'.jpg': 1,
    "new\nline.jpg": 2,
    "ünïcødé 猫 كلب.jpg": 3,
    "rtl\u202egpj.jpg": 4,
}
BROKEN = {
    "empty.jpg": b"",
    "notes.txt": b"just text\n",
    '"><svg onload=alert(2)>.png': b"\x89PNG\r\n\x1a\n not really",
}


def _chromium() -> str:
    """Debian's chromium and the playwright package, or a skip (a failure with CI=true) saying what to install."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (make setup installs it)")
    executable = shutil.which("chromium")
    if executable is None:
        missing.append("Debian's chromium (apt-get install chromium)")
    if missing:
        missing_input(f"browser tests need {' and '.join(missing)}")
    return executable


def test_browser_tests_skip_without_chromium_but_fail_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(conftest, "CI", False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        _chromium()
    monkeypatch.setattr(conftest, "CI", True)
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        _chromium()


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory, tiny_bundle, real_dataset: RealDataset) -> dict:
    """Real photos, broken files and hostile names labeled by predict-folder, reported, and opened in Chromium:
    what the page showed (DOM facts, console messages, dialogs, requests) beside the CSV."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    photos = root / "photos"
    photos.mkdir()
    picked = []
    with zipfile.ZipFile(real_dataset.zip) as zf:
        for cls in ("cats", "dogs"):
            folder = f"{real_dataset.top}/train/{cls}/"
            for name in sorted(n for n in zf.namelist() if n.startswith(folder) and n.endswith(".jpg"))[:4]:
                picked.append(photos / name.rsplit("/", 1)[1])
                picked[-1].write_bytes(zf.read(name))
    for name, index in HOSTILE_COPIES.items():
        shutil.copy2(picked[index], photos / name)
    for name, data in BROKEN.items():
        (photos / name).write_bytes(data)
    truncated = picked[0].read_bytes()
    (photos / "truncated.jpg").write_bytes(truncated[: len(truncated) // 3])
    labels = root / "labels.csv"
    # --no-neither: the tiny model finds every photo neither, and this page is about cat and dog rows.
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", labels, "--no-neither", timeout=300)
    picked[-1].unlink()  # gone since labeling: a placeholder, not a crash
    out = root / "report.html"
    catdog("report", labels, "--images", photos, "--model", tiny_bundle, "--out", out, timeout=120)

    with open(labels, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    facts: dict = {"rows": rows, "console": [], "dialogs": [], "requests": [], "url": out.as_uri()}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable)
        try:
            page = browser.new_page()
            page.on("console", lambda m: facts["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: facts["console"].append(f"pageerror: {e}"))
            page.on("dialog", lambda d: (facts["dialogs"].append(d.message), d.dismiss()))
            page.on("request", lambda r: facts["requests"].append(r.url))
            page.goto(facts["url"], wait_until="load")
            page.wait_for_timeout(300)  # let any (unwanted) late handler fire
            facts.update(
                page.evaluate(
                    """() => {
                    const count = sel => [...document.querySelectorAll(sel)].map(
                        tr => [tr.dataset.status || tr.dataset.label, tr.querySelector('[data-count]').innerText]);
                    return {
                        images: [...document.images].map(i => ({alt: i.alt, src: i.src.slice(0, 23),
                                                                 width: i.naturalWidth, complete: i.complete})),
                        statuses: count('#counts tr[data-status]'),
                        labels: count('#counts tr[data-label]'),
                        reasons: [...document.querySelectorAll('#errors .reason')].map(
                            r => [r.querySelector('.why').innerText, r.querySelector('[data-count]').innerText]),
                        placeholders: [...document.querySelectorAll('.missing')].map(m => m.innerText),
                        captions: [...document.querySelectorAll('figcaption .path')].map(c => c.innerText),
                        errorPaths: [...document.querySelectorAll('#errors li.path')].map(c => c.innerText),
                        scripts: document.scripts.length,
                        handlers: [...document.querySelectorAll('*')].flatMap(
                            el => [...el.attributes].filter(a => a.name.startsWith('on')).map(a => el.tagName + ' ' + a.name)),
                        svg: document.querySelectorAll('#histogram svg rect').length,
                        threshold: document.querySelector('#threshold').innerText,
                        text: document.body.innerText,
                    };
                }"""
                )
            )
        finally:
            browser.close()
    facts["meta"] = json.loads((tiny_bundle / "meta.json").read_text())
    facts["gone"] = picked[-1].name
    return facts


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.browser
def test_every_thumbnail_decodes_in_chromium_without_console_errors(browser_run):
    images = browser_run["images"]
    # The uncertain images and samples: 8 photos, 5 hostile-named copies, less the one deleted.
    assert len({i["alt"] for i in images}) == 12
    assert all(i["complete"] and i["width"] > 0 for i in images), images
    assert all(i["src"] == "data:image/jpeg;base64," for i in images)
    assert browser_run["console"] == []
    assert browser_run["svg"] == 20
    assert browser_run["threshold"].startswith(f"{browser_run['meta']['threshold']:.4f}")


@pytest.mark.browser
def test_counts_on_the_page_equal_the_csvs(browser_run):
    rows = browser_run["rows"]
    statuses = Counter(r["status"] for r in rows)
    assert {k: _number(v) for k, v in browser_run["statuses"]} == {**{"ok": 0, "error": 0}, **statuses, "total": len(rows)}
    assert {k: _number(v) for k, v in browser_run["labels"]} == Counter(r["label"] for r in rows if r["status"] == "ok")
    reasons = Counter(r["error"] for r in rows if r["status"] == "error")
    assert {k: _number(v) for k, v in browser_run["reasons"]} == reasons
    assert sorted(browser_run["errorPaths"]) == sorted(
        r["path"].replace("\n", "\\n") for r in rows if r["status"] == "error"
    )
    assert statuses["error"] == len(BROKEN) + 1


@pytest.mark.browser
def test_hostile_names_show_as_text_and_run_nothing(browser_run):
    assert browser_run["dialogs"] == []
    assert browser_run["scripts"] == 0 and browser_run["handlers"] == []
    captions = browser_run["captions"]
    for name in (HOSTILE, 'a&b "double" \'single\'.jpg', "ünïcødé 猫 كلب.jpg", "new\\nline.jpg", "rtl\\u202egpj.jpg"):
        assert name in captions
    assert '"><svg onload=alert(2)>.png' in browser_run["errorPaths"]
    assert HOSTILE in browser_run["text"]


@pytest.mark.browser
def test_page_loads_nothing_from_the_network(browser_run):
    assert browser_run["requests"] == [browser_run["url"]]


@pytest.mark.browser
def test_a_file_gone_since_labeling_is_a_placeholder_with_its_reason(browser_run):
    assert browser_run["gone"] in browser_run["captions"]
    assert "file not found" in browser_run["placeholders"]


# --- hardening (issue 20) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("record", ["nested", "fifo", "version_1", "huge"])
def test_report_ignores_a_job_record_it_cannot_use(record, small_run, tmp_path):
    photos, labels = small_run
    path = labels.with_name("labels.csv.job.json")
    if record == "nested":
        path.write_text("[" * 100_000)
    elif record == "fifo":
        os.mkfifo(path)
    elif record == "version_1":
        path.write_text(json.dumps({"version": 1, "source": str(photos), "threshold": 0.2}))
    else:
        path.write_text("[" * 60_000)
    result = catdog("report", labels, "--images", photos, "--out", tmp_path / "r.html", timeout=60)
    assert "report of 8 rows" in result.stderr
    assert "0.5000 <span class=\"note\">(the default" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_given_as_the_csv_is_refused_at_once_not_waited_on(tmp_path, kind):
    """A FIFO would block the reader until something writes to it; /dev/zero never ends: one line each."""
    from catdog import read_labels

    path = tmp_path / "labels.csv" if kind == "fifo" else Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(path)
    what = "a FIFO" if kind == "fifo" else "a device or socket"
    result = catdog("report", path, "--images", tmp_path, "--out", tmp_path / "r.html", check=False, timeout=60)
    assert result.returncode == 1 and result.stderr == f"error: {path} is {what}, not a labels CSV\n", result.stderr
    with pytest.raises(CatdogError, match=f"is {what}, not a labels CSV"):
        read_labels(path)
    assert not (tmp_path / "r.html").exists()


def test_report_of_a_csv_without_line_breaks_is_refused_in_bounded_memory(tmp_path):
    script = (
        "import re, sys; from pathlib import Path; from catdog.errors import CatdogError; "
        "from catdog.labeling.report import Selection, summarize_labels\n"
        "try:\n    summarize_labels(Path(sys.argv[1]), Selection(0.5, 4, 4))\nexcept CatdogError as exc:\n    print(exc)\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1))"
    )
    small = write_labels(tmp_path / "small.csv", [ok("a.jpg", 0.3)])
    baseline = int(run([sys.executable, "-c", script, str(small)]).stdout.split()[-1])
    one_line = tmp_path / "one-line.csv"
    one_line.write_bytes(HEADER.encode() + b"a" * 40_000_000)
    done = run([sys.executable, "-c", script, str(one_line)])
    said, peak = done.stdout.rsplit("\n", 2)[:2]
    assert "line 2: a row longer than" in said
    assert (int(peak) - baseline) / 1024 < 20, f"peak RSS {baseline / 1024:.0f} MiB, then {int(peak) / 1024:.0f} MiB for a 40 MB line"


def test_report_messages_name_the_real_problem(small_run, tmp_path):
    photos, labels = small_run
    (tmp_path / "file").write_text("")
    result = catdog("report", labels, "--images", photos, "--out", tmp_path / "file" / "r.html", check=False)
    assert result.stderr.strip() == f"error: cannot write {tmp_path}/file/r.html: {tmp_path}/file is not a folder"
    result = catdog("report", photos, "--images", photos, "--out", tmp_path / "r.html", check=False)
    assert result.stderr.strip() == f"error: {photos} is a folder, not a labels CSV"


def _boxes(svg: str, cls: str) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of each <text class=cls>, from its anchor, font size and length (a glyph is at most
    0.62 em wide in the fonts browsers use for these digits and letters)."""
    boxes = []
    for m in re.finditer(rf'<text class="{cls}" x="([\d.]+)" y="([\d.]+)" text-anchor="(\w+)" font-size="(\d+)"[^>]*>([^<]*)<', svg):
        x, y, anchor, size, text = float(m[1]), float(m[2]), m[3], float(m[4]), m[5]
        width = 0.62 * size * len(text)
        x0 = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
        boxes.append((x0, y - size, x0 + width, y + 0.25 * size))
    return boxes


@pytest.mark.parametrize("threshold", [0.03, 0.5, 0.97])
def test_histogram_threshold_label_never_covers_a_bar_count(threshold):
    counts = [120_000, 3_000] + [40] * 16 + [9_000, 1_250_000]  # the tallest bars under the label at either end
    svg = histogram_svg(counts, threshold)
    (mark,) = _boxes(svg, "mark")
    counts_boxes = _boxes(svg, "count")
    assert len(counts_boxes) == 20
    for box in counts_boxes:
        overlap = min(mark[2], box[2]) > max(mark[0], box[0]) and min(mark[3], box[3]) > max(mark[1], box[1])
        assert not overlap, (mark, box)
    assert mark[1] >= 0, "the label stays inside the picture"


def test_report_reads_the_csv_once_when_its_job_record_describes_it(small_run, tmp_path, monkeypatch):
    import builtins

    photos, labels = small_run
    write_job_record(labels, JobRecord(
        source=str(photos), model="sha256:" + "0" * 64, threshold=0.3, shard=(0, 1), recursive=True, rows=8,
        csv_sha256=file_sha256(labels), listing="0" * 32,
    ))
    opened = []

    def counting(real_open):
        def counting_open(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file) == labels:
                opened.append(file)
            return real_open(file, *args, **kwargs)

        return counting_open

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(os, "open", counting(os.open))
    write_report(labels, str(photos), tmp_path / "r.html", ReportOptions())
    assert len(opened) == 1
    assert "0.3000 <span class=\"note\">(the one the labeling run used" in (tmp_path / "r.html").read_text()


# --- the neither label and pet_score (issue 18) ---------------------------------------------------------


def pet_row(path: str, p: float, pet: float, threshold: float = 0.5, pet_threshold: float = 0.3) -> tuple[str, ...]:
    label = "neither" if pet < pet_threshold else ("dog" if p >= threshold else "cat")
    return (path, label, f"{p:.6f}", f"{pet:.6f}", "ok", "")


@pytest.fixture
def neither_run(tmp_path) -> tuple[Path, Path]:
    """Cats, dogs and other things, a hostile name among the others, and a record with a pet threshold of 0.3."""
    photos = tmp_path / "photos"
    rows = []
    for i in range(6):
        for kind, color, p, pet in (("cat", (190, 70, 50), 0.1, 0.9), ("dog", (50, 80, 190), 0.9, 0.8), ("car", (90, 90, 90), 0.6, 0.05)):
            name = f"{kind}{i}.jpg" if (kind, i) != ("car", 0) else HOSTILE
            make_image(photos / name, color=color, seed=i)
            rows.append(pet_row(name, p + i / 100, pet - i / 100 + (0.22 if kind == "car" and i == 5 else 0)))
    labels = write_labels(tmp_path / "labels.csv", rows)
    write_job_record(labels, JobRecord(
        source=str(photos), model="sha256:" + "0" * 64, threshold=0.5, shard=(0, 1), recursive=True, rows=len(rows),
        csv_sha256=file_sha256(labels), listing="0" * 32, pet_threshold=0.3,
    ))
    return photos, labels


def test_report_shows_neither_as_its_own_group_and_the_pets_nearest_the_pet_threshold(neither_run, tmp_path):
    photos, labels = neither_run
    result = write_report(labels, str(photos), tmp_path / "r.html", ReportOptions())
    assert (result.rows, result.neither, result.unreadable) == (18, 6, 0)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    tags = parse(page)
    assert '<tr data-label="neither"><td>neither</td><td class="n" data-count="6">6</td>' in page
    assert '<h3 data-label="neither">neither: 6 of 6, sorted by path</h3>' in page
    assert 'id="pet-threshold">0.3000' in page and "pet threshold 0.300" in page  # in provenance and on the pet_score histogram
    nearest = page.split('<section id="pet-nearest">')[1].split("</section>")[0]
    shown = [a["alt"] for t, a in parse(nearest).tags if t == "img"]
    # car5 (0.22 + 0.05 - 0.05 = 0.22) is nearest 0.3, then the other cars from 0.05 up and dogs from 0.75 down.
    # car5 (pet 0.22) is nearest 0.3, then the other cars (0.05 down to 0.01), the dogs (0.75 up), the cats (0.85 up).
    cars = ["car5.jpg", HOSTILE, *(f"car{i}.jpg" for i in range(1, 5))]
    assert shown == cars + [f"dog{i}.jpg" for i in range(5, -1, -1)] + [f"cat{i}.jpg" for i in range(5, -1, -1)]
    uncertain = page.split('<section id="uncertain">')[1].split("</section>")[0]
    assert "car" not in uncertain, "the p_dog of a neither row says nothing: it is not among the uncertain"
    assert HOSTILE not in page.replace(html.escape(HOSTILE), "") and not [t for t, _ in tags.tags if t == "script"]
    assert 'id="disagreements"' not in page
    done = catdog("report", labels, "--images", photos, "--out", tmp_path / "cli.html")
    assert "report of 18 rows (18 ok, 0 error; 6 of the ok neither a cat nor a dog), 18 images shown" in done.stderr


def test_labels_that_disagree_with_the_pet_threshold_are_counted(neither_run, tmp_path):
    photos, labels = neither_run
    summary = summarize_labels(labels, Selection(0.5, 4, 4, positive="dog", pet_threshold=0.5, n_pet=4))
    assert summary.disagreements == 0  # the cars are still below it, the cats and dogs above
    summary = summarize_labels(labels, Selection(0.5, 4, 4, positive="dog", pet_threshold=0.85, n_pet=4))
    assert summary.disagreements == 6  # the dogs (pet 0.75-0.8) would be neither; the cats (0.85-0.9) stay


def test_a_five_column_csv_from_before_neither_still_opens_in_report(small_run, tmp_path):
    photos, labels = small_run
    with open(labels, newline="", encoding="utf-8") as fh:
        rows = [row[:3] + row[4:] for row in csv.reader(fh)]
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\r\n").writerows(rows)
    assert rows[0] == ["path", "label", "p_dog", "status", "error"]
    result = catdog("report", labels, "--images", photos, "--out", tmp_path / "r.html")
    assert "report of 8 rows (6 ok, 2 error)" in result.stderr
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="legacy"' in page and 'id="pet-histogram"' not in page


def test_undecodable_and_escape_like_names_each_show_their_own_picture(tiny_bundle, tmp_path):
    """`a\\xffb.jpg` (a real 0xff byte) and `a\\udcffb.jpg` (that text) are two files with two pictures, and a
    Latin-1 name is found."""
    photos = tmp_path / "photos"
    names = {b"a\xffb.jpg": (200, 40, 40), b"a\\udcffb.jpg": (40, 40, 200), b"caf\xe9.jpg": (40, 200, 40)}
    for name, color in names.items():
        make_image(photos / os.fsdecode(name), color=color, size=(40, 40))
    labels = tmp_path / "labels.csv"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", labels)
    result = catdog("report", labels, "--images", photos, "--out", tmp_path / "r.html")
    assert "3 images shown" in result.stderr and "unreadable" not in result.stderr
    images = {a["alt"]: a["src"] for t, a in parse((tmp_path / "r.html").read_text(encoding="utf-8")).tags if t == "img"}
    assert set(images) == {"a\\xffb.jpg", "a\\\\udcffb.jpg", "caf\\xe9.jpg"}
    assert len(set(images.values())) == 3, "each file shows its own picture"
