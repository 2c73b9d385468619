"""The labels report: one self-contained HTML page that shows what a labels CSV holds.

Owns reading a labels CSV as a stream into a fixed-size summary (counts, a histogram of p_dog, the rows
nearest the threshold, a seeded sample per label, the errors by reason), the thumbnails of the few images
shown, and the page itself: HTML with an inline SVG histogram and embedded JPEGs, no script, nothing loaded
from the network. Memory does not grow with the CSV, and only the images shown are decoded.
"""

from __future__ import annotations

import base64
import csv
import heapq
import html
import io
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError
from catdog.fsutil import HashingReader, write_text
from catdog.images import DEFAULT_MAX_PIXELS, ImageError, describe_error, load_thumbnail
from catdog.labeling.jobrecord import file_sha256, job_record_path, read_job_record
from catdog.labeling.labels import COLUMNS
from catdog.labeling.runtime import ModelMeta
from catdog.labeling.sources import LocalSource, Source, open_source

DEFAULT_THRESHOLD = 0.5
DEFAULT_IMAGES = 240  # thumbnails on the page: 2/5 the most uncertain, the rest a sample split between the labels
MAX_IMAGES = 1000
MAX_LABELS = 3  # cat, dog and neither; more labels means it is not a catdog labels CSV
HISTOGRAM_BINS = 20
ERROR_PATHS = 20  # paths listed under each error reason
MAX_REASONS = 100  # distinct error reasons listed; errors with any further reason are counted together
REASON_CHARS = 300
THUMB_SIDE = 160
JPEG_QUALITY = 80


@dataclass(frozen=True)
class ReportOptions:
    threshold: float | None = None  # None: the one the CSV's job record states, else the model's, else DEFAULT_THRESHOLD
    model: Path | None = None
    max_images: int = DEFAULT_IMAGES
    seed: int = 0
    overwrite: bool = False
    s3_endpoint_url: str | None = None
    workers: int | None = None  # threads reading and decoding thumbnails [default: usable CPUs]


@dataclass(frozen=True)
class Selection:
    """What the one pass over the CSV keeps, besides counts."""

    threshold: float
    n_uncertain: int
    n_sample: int  # per label
    seed: int = 0
    positive: str | None = None  # the label for p_dog >= threshold, when known (from the model)


@dataclass(frozen=True)
class Row:
    path: str
    label: str
    p_dog: float


@dataclass
class LabelStats:
    count: int = 0
    p_min: float = math.inf
    p_max: float = -math.inf


@dataclass
class ReasonStats:
    count: int = 0
    paths: list[str] = field(default_factory=list)


@dataclass
class LabelSummary:
    """Everything the page shows about the CSV; its size is bounded whatever the number of rows."""

    rows: int = 0
    statuses: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    labels: dict[str, LabelStats] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)
    uncertain: list[Row] = field(default_factory=list)  # nearest the threshold first
    samples: dict[str, list[Row]] = field(default_factory=dict)  # per label, sorted by path
    reasons: dict[str, ReasonStats] = field(default_factory=dict)
    other_errors: int = 0  # errors whose reason came after MAX_REASONS others
    disagreements: int | None = None  # ok rows labelled against the threshold (None: positive label unknown)
    sha256: str = ""


class _Candidate:
    """A heap entry ordered in reverse, so the heap's top is the least uncertain row kept."""

    __slots__ = ("key", "row")

    def __init__(self, key: tuple[float, str], row: Row):
        self.key, self.row = key, row

    def __lt__(self, other: _Candidate) -> bool:
        return other.key < self.key


class _Nearest:
    """The k rows with p_dog nearest the threshold; ties go to the smaller path, so the choice is stable.

    `bound` is the distance a row must not exceed to be considered, so most rows cost one comparison."""

    def __init__(self, k: int, threshold: float):
        self.k, self.threshold = k, threshold
        self.heap: list[_Candidate] = []
        self.bound = math.inf if k > 0 else -math.inf

    def add(self, path: str, label: str, p: float) -> None:
        # Rounded: p_dog has 6 decimals, and 0.45 and 0.55 must be equally near 0.5 (in floats they are not).
        key = (round(abs(p - self.threshold), 9), path)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, _Candidate(key, Row(path, label, p)))
        elif key < self.heap[0].key:
            heapq.heapreplace(self.heap, _Candidate(key, Row(path, label, p)))
        else:
            return
        if len(self.heap) == self.k:
            self.bound = self.heap[0].key[0] + 1e-9

    def rows(self) -> list[Row]:
        return [c.row for c in sorted(self.heap, key=lambda c: c.key)]


class _Reservoir:
    """A uniform random sample of k rows of one label (Li's Algorithm L: random numbers are drawn only for
    the rows taken, not for every row), seeded by (seed, label)."""

    def __init__(self, k: int, seed: int, label: str):
        self.k, self.seen, self.rows = k, 0, []
        self.rng = random.Random(f"{seed}/{label}")
        self.next = k  # the index (in rows seen) of the next row to take once the reservoir is full
        self.w = 1.0
        if k:
            self._skip()

    def _skip(self) -> None:
        self.w *= math.exp(math.log(1.0 - self.rng.random()) / self.k)
        self.next += int(math.log(1.0 - self.rng.random()) / math.log1p(-self.w)) if self.w < 1.0 else 0

    def add(self, path: str, label: str, p: float) -> None:
        if len(self.rows) < self.k:
            self.rows.append(Row(path, label, p))
        elif self.seen == self.next and self.k:
            self.rows[self.rng.randrange(self.k)] = Row(path, label, p)
            self.next += 1
            self._skip()
        self.seen += 1


def summarize_labels(csv_path: Path, selection: Selection) -> LabelSummary:
    """One streaming pass over a labels CSV (path,label,p_dog,status,error) into a bounded summary.

    Raises `CatdogError` naming the file and line when it is not a labels CSV.
    """
    summary = LabelSummary()
    nearest = _Nearest(selection.n_uncertain, selection.threshold)
    reservoirs: dict[str, _Reservoir] = {}
    t, positive = selection.threshold, selection.positive
    disagreements = 0
    histogram = summary.histogram
    try:
        raw = open(csv_path, "rb")
    except FileNotFoundError:
        raise CatdogError(f"labels CSV not found: {csv_path}") from None
    except IsADirectoryError:
        raise CatdogError(f"{csv_path} is a folder; give the labels CSV") from None
    with raw, io.TextIOWrapper(
        io.BufferedReader(hashing := HashingReader(raw)), encoding="utf-8-sig", errors="backslashreplace", newline=""
    ) as fh:
        reader = csv.reader(fh)

        def bad(what: str) -> CatdogError:
            return CatdogError(f"{csv_path}: line {reader.line_num}: {what}")

        try:
            header = next(reader, None)
            if header is None:
                raise CatdogError(f"{csv_path} is empty, not a labels CSV ({','.join(COLUMNS)})")
            if tuple(header) != COLUMNS:
                raise bad(f"not a labels CSV: the header is {','.join(header)!r}, expected {','.join(COLUMNS)!r}")
            for record in reader:
                try:
                    path, label, p_text, _pet_text, status, error = record
                except ValueError:
                    raise bad(f"expected {len(COLUMNS)} fields, found {len(record)}") from None
                if not path:
                    raise bad("empty path")
                summary.rows += 1
                if status == "ok":
                    try:
                        p = float(p_text)
                    except ValueError:
                        p = math.nan
                    if not 0.0 <= p <= 1.0:
                        raise bad(f"p_dog {p_text!r} is not a number from 0 to 1")
                    if not label:
                        raise bad("a row with status ok has no label")
                    stats = summary.labels.get(label)
                    if stats is None:
                        if len(summary.labels) == MAX_LABELS:
                            raise bad(f"a fourth label {label!r} (after {', '.join(map(repr, summary.labels))}): not a two-class labels CSV")
                        stats = summary.labels[label] = LabelStats()
                        reservoirs[label] = _Reservoir(selection.n_sample, selection.seed, label)
                    # The hot path, per row: no object is made for a row that is not kept.
                    stats.count += 1
                    if p < stats.p_min:
                        stats.p_min = p
                    if p > stats.p_max:
                        stats.p_max = p
                    b = int(p * HISTOGRAM_BINS)
                    histogram[b if b < HISTOGRAM_BINS else HISTOGRAM_BINS - 1] += 1
                    if abs(p - t) <= nearest.bound:
                        nearest.add(path, label, p)
                    sample = reservoirs[label]
                    if sample.seen < sample.k or sample.seen == sample.next:
                        sample.add(path, label, p)
                    else:
                        sample.seen += 1
                    if positive is not None and (p >= t) != (label == positive):
                        disagreements += 1
                elif status == "error":
                    reason = " ".join(error.split())[:REASON_CHARS] or "(no reason given)"
                    stats = summary.reasons.get(reason)
                    if stats is None and len(summary.reasons) < MAX_REASONS:
                        stats = summary.reasons[reason] = ReasonStats()
                    if stats is None:
                        summary.other_errors += 1
                    else:
                        stats.count += 1
                        if len(stats.paths) < ERROR_PATHS:
                            stats.paths.append(path)
                else:
                    raise bad(f"status {status!r} is neither ok nor error")
                summary.statuses[status] += 1
        except csv.Error as exc:
            raise bad(f"malformed CSV: {exc}") from None
    summary.uncertain = nearest.rows()
    summary.samples = {label: sorted(r.rows, key=lambda row: row.path) for label, r in sorted(reservoirs.items())}
    summary.disagreements = disagreements if positive is not None else None
    summary.sha256 = hashing.sha256.hexdigest()
    return summary


@dataclass(frozen=True)
class Thumbnail:
    uri: str = ""  # a data: URI of a small JPEG; empty when the image could not be shown
    width: int = 0
    height: int = 0
    problem: str | None = None


def _inside(rel: str) -> bool:
    """Whether a CSV path names a file under the source (a CSV from elsewhere may hold anything)."""
    return bool(rel) and not rel.startswith("/") and "\0" not in rel and ".." not in rel.split("/")


def thumbnail(source: Source, rel: str, side: int = THUMB_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> Thumbnail:
    """The one place the report reads an image. A file that is gone or unusable gives its reason, never raises."""
    if not _inside(rel):
        return Thumbnail(problem="not a relative path inside the images source")
    try:
        with source.opened(rel) as data:
            image = load_thumbnail(data, side, max_pixels)
    except ImageError as exc:
        return Thumbnail(problem=str(exc))
    except OSError as exc:  # the object could not be fetched (S3)
        known = isinstance(exc, (FileNotFoundError, PermissionError))
        return Thumbnail(problem=describe_error(exc) if known else f"cannot read: {' '.join(str(exc).split())}")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Thumbnail(uri, image.width, image.height)


def histogram_svg(counts: list[int], threshold: float, width: int = 640, height: int = 220) -> str:
    """Bars of `counts` over equal bins of 0-1 on a log scale (the middle bins are small), the threshold marked."""
    left, right, top, bottom = 56, 12, 22, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(counts)
    peak = math.log10(1 + max(counts, default=0)) or 1.0
    bar_w = plot_w / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="Histogram of p_dog, log scale, threshold {threshold:.3f}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
    ]
    for power in range(int(peak) + 1):
        y = top + plot_h - plot_h * math.log10(1 + 10**power) / peak
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#444"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{10**power:,}</text>')
    for i, count in enumerate(counts):
        lo, hi = i / n, (i + 1) / n
        h = plot_h * math.log10(1 + count) / peak
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="#5b8db8">'
            f"<title>p_dog {lo:.2f}-{hi:.2f}: {count:,} images</title></rect>"
        )
        if count:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" font-size="9">{count:,}</text>'
            )
    for tick in range(0, 11, 2):
        x = left + plot_w * tick / 10
        parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#444"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{tick / 10:.1f}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" font-size="11">p_dog</text>')
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">images (log scale)</text>'
    )
    tx = left + plot_w * threshold
    parts.append(f'<line x1="{tx:.1f}" y1="{top - 6}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5,3"/>')
    anchor = "end" if threshold > 0.8 else "start"
    parts.append(
        f'<text x="{tx + (-4 if anchor == "end" else 4):.1f}" y="{top - 6}" text-anchor="{anchor}" font-size="11" '
        f'fill="#c0392b">threshold {threshold:.3f}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _text(value: object) -> str:
    """Any text as HTML: markup escaped, and characters that are invisible or move text (newlines, tabs,
    bidirectional overrides, zero-width ones) shown as their \\n or \\u202e escapes."""
    s = str(value)
    if not s.isprintable():
        s = "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape", "backslashreplace").decode("ascii") for ch in s)
    return html.escape(s, quote=True)


@dataclass(frozen=True)
class Provenance:
    """Where the report came from, as the user named it (so the page is the same on every machine)."""

    csv: str
    images: str
    model: str | None
    model_name: str | None
    threshold: float
    threshold_from: str
    seed: int
    max_images: int


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;max-width:1180px;margin:1.5em auto;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1.2em 0 .3em}table{border-collapse:collapse}
td,th{padding:.2em .9em .2em 0;border-bottom:1px solid #e4e4e4;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}code,.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dt{color:#666}dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(172px,1fr));gap:10px}
figure{margin:0;padding:6px;border:1px solid #ddd;border-radius:4px;background:#fafafa}
figure img{display:block;margin:0 auto;max-width:100%;height:auto}
.missing{box-sizing:border-box;width:160px;height:120px;margin:0 auto;padding:8px;display:flex;align-items:center;
justify-content:center;text-align:center;font-size:12px;color:#922;border:2px dashed #d99;background:#fff4f4}
figcaption{margin-top:4px;font-size:12px}.p{font-weight:600}.note{color:#666}.warn{color:#922;font-weight:600}
ul.paths{margin:.2em 0;padding-left:1.4em}.tables{display:flex;flex-wrap:wrap;gap:0 3em;align-items:flex-start}
"""


def _figure(row: Row, thumb: Thumbnail) -> str:
    path = _text(row.path)
    if thumb.problem is None:
        picture = f'<img src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" alt="{path}">'
    else:
        picture = f'<div class="missing" role="img" aria-label="{path}: {_text(thumb.problem)}">{_text(thumb.problem)}</div>'
    return (
        f'<figure>{picture}<figcaption><span class="p">{_text(row.label)} {row.p_dog:.4f}</span>'
        f'<div class="path">{path}</div></figcaption></figure>'
    )


def _grid(rows: list[Row], thumbs: dict[str, Thumbnail]) -> str:
    if not rows:
        return '<p class="note">None.</p>'
    return '<div class="grid">\n' + "\n".join(_figure(r, thumbs[r.path]) for r in rows) + "\n</div>"


def _count_cell(n: int) -> str:
    return f'<td class="n" data-count="{n}">{n:,}</td>'


def render_report(summary: LabelSummary, thumbs: dict[str, Thumbnail], info: Provenance) -> str:
    """The page: provenance, counts, histogram, uncertain images, samples per label, errors by reason."""
    ok = summary.statuses["ok"]
    e = _text
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Defence in depth on top of escaping: no script may run, and nothing may load from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>catdog labels report: {e(info.csv)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Labels report</h1><p class=\"note\">{summary.rows:,} rows of <code>{e(info.csv)}</code></p>",
        '<section id="provenance"><dl>',
        f"<dt>labels CSV</dt><dd><code>{e(info.csv)}</code> (sha256 <code>{summary.sha256}</code>)</dd>",
        f"<dt>images</dt><dd><code>{e(info.images)}</code></dd>",
        f"<dt>model</dt><dd>{f'<code>{e(info.model)}</code> ({e(info.model_name)})' if info.model else 'not given'}</dd>",
        f'<dt>threshold</dt><dd id="threshold">{info.threshold:.4f} <span class="note">({e(info.threshold_from)})</span></dd>',
        f"<dt>selection</dt><dd>seed {info.seed}, at most {info.max_images} images shown; thumbnails are of the files as they are now</dd>",
        "</dl></section>",
    ]
    if summary.disagreements:
        out.append(
            f'<p class="warn" id="disagreements">{summary.disagreements:,} labels disagree with this threshold: '
            "the CSV was made with another threshold or model.</p>"
        )

    out.append('<section id="counts"><h2>Counts</h2><div class="tables"><table><thead><tr><th>status</th><th class="n">rows</th></tr></thead><tbody>')
    for status, n in summary.statuses.items():
        out.append(f'<tr data-status="{e(status)}"><td>{e(status)}</td>{_count_cell(n)}</tr>')
    out.append(f'<tr data-status="total"><th>total</th>{_count_cell(summary.rows)}</tr></tbody></table>')
    out.append(
        '<table><thead><tr><th>label</th><th class="n">rows</th><th class="n">share of ok</th><th>p_dog range</th></tr></thead><tbody>'
    )
    for label, stats in sorted(summary.labels.items()):
        share = f"{stats.count / ok:.1%}" if ok else "-"
        out.append(
            f'<tr data-label="{e(label)}"><td>{e(label)}</td>{_count_cell(stats.count)}<td class="n">{share}</td>'
            f"<td>{stats.p_min:.4f} - {stats.p_max:.4f}</td></tr>"
        )
    out.append("</tbody></table></div></section>")

    out.append('<section id="histogram"><h2>p_dog</h2>')
    out.append(histogram_svg(summary.histogram, info.threshold) if ok else '<p class="note">No ok rows.</p>')
    out.append("</section>")

    out.append(
        f'<section id="uncertain"><h2>Most uncertain</h2><p class="note">The {len(summary.uncertain)} images with p_dog '
        "nearest the threshold, nearest first.</p>"
    )
    out.append(_grid(summary.uncertain, thumbs) + "</section>")

    out.append('<section id="sample"><h2>Random sample per label</h2>')
    for label, rows in summary.samples.items():
        n = summary.labels[label].count
        out.append(f'<h3 data-label="{e(label)}">{e(label)}: {len(rows)} of {n:,}, sorted by path</h3>')
        out.append(_grid(rows, thumbs))
    if not summary.samples:
        out.append('<p class="note">No ok rows.</p>')
    out.append("</section>")

    n_errors = summary.statuses["error"]
    out.append(f'<section id="errors"><h2>Errors</h2><p class="note">Files that could not be labelled: {n_errors:,}, by reason.</p>')
    for reason, stats in sorted(summary.reasons.items(), key=lambda kv: (-kv[1].count, kv[0])):
        files = "file" if stats.count == 1 else "files"
        out.append(
            f'<div class="reason"><h3><span class="why">{e(reason)}</span> '
            f'<span class="note">(<span data-count="{stats.count}">{stats.count:,}</span> {files})</span></h3>'
        )
        out.append('<ul class="paths">' + "".join(f'<li class="path">{e(p)}</li>' for p in stats.paths) + "</ul>")
        if stats.count > len(stats.paths):
            out.append(f'<p class="note">and {stats.count - len(stats.paths):,} more</p>')
        out.append("</div>")
    if summary.other_errors:
        out.append(f'<p class="note" id="other-errors">and {summary.other_errors:,} errors with {MAX_REASONS}+ other reasons</p>')
    out.append("</section>")
    out.append('<p class="note">Made by <code>catdog report</code>.</p></body></html>\n')
    return "\n".join(out)


@dataclass(frozen=True)
class ReportResult:
    out: Path
    rows: int
    ok: int
    error: int
    shown: int
    unreadable: int  # images chosen to show that are gone or cannot be decoded now


def _model_meta(model: Path) -> ModelMeta:
    if not model.exists():
        raise CatdogError(f"model not found: {model}")
    return ModelMeta.read((model if model.is_dir() else model.parent) / "meta.json")


def _recorded_threshold(labels_csv: Path) -> float | None:
    """The threshold a sharded run recorded beside its CSV (`<csv>.job.json`), when that record is readable and
    still describes the CSV (same sha256); None otherwise. A stale or broken record is no reason to fail a report."""
    if not job_record_path(labels_csv).is_file():
        return None
    try:
        record = read_job_record(labels_csv)
        return record.threshold if record.csv_sha256 == file_sha256(labels_csv) else None
    except (CatdogError, OSError):
        return None


def write_report(labels_csv: Path, images: str, out: Path, options: ReportOptions) -> ReportResult:
    """Summarize `labels_csv`, decode the images it shows from `images` (a folder or S3 prefix), write `out`."""
    out, labels_csv = Path(out), Path(labels_csv)
    if out.is_dir():
        raise CatdogError(f"--out {out} is a folder; give an HTML file path")
    if out.exists() and not options.overwrite:
        raise CatdogError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and labels_csv.exists() and out.samefile(labels_csv):
        raise CatdogError(f"--out {out} is the labels CSV itself")
    if not 0 <= options.max_images <= MAX_IMAGES:
        raise CatdogError(f"--max-images {options.max_images}: choose 0 to {MAX_IMAGES}")
    meta = _model_meta(options.model) if options.model is not None else None
    recorded = _recorded_threshold(labels_csv) if options.threshold is None else None
    if options.threshold is not None:
        threshold, threshold_from = options.threshold, "given with --threshold"
    elif recorded is not None:
        threshold, threshold_from = recorded, f"the one the labeling run used, from {job_record_path(labels_csv).name}"
    elif meta is not None:
        threshold, threshold_from = meta.threshold, "the model's, from its meta.json"
    else:
        threshold, threshold_from = DEFAULT_THRESHOLD, "the default: no --model or --threshold given"
    if not 0 < threshold < 1:
        raise CatdogError(f"--threshold {threshold}: choose a value between 0 and 1")
    source = open_source(images, options.s3_endpoint_url)
    if isinstance(source, LocalSource) and not Path(images).is_dir():
        raise CatdogError(f"images folder not found: {images}")

    n_uncertain = options.max_images * 2 // 5
    selection = Selection(
        threshold, n_uncertain, (options.max_images - n_uncertain) // MAX_LABELS, options.seed,
        meta.classes[1] if meta is not None else None,
    )
    summary = summarize_labels(labels_csv, selection)

    shown = list(dict.fromkeys(r.path for r in [*summary.uncertain, *(r for rows in summary.samples.values() for r in rows)]))
    max_pixels = meta.max_pixels if meta is not None else DEFAULT_MAX_PIXELS
    with ThreadPoolExecutor(max_workers=options.workers or usable_cpus()) as pool:
        thumbs = dict(zip(shown, pool.map(lambda rel: thumbnail(source, rel, THUMB_SIDE, max_pixels), shown)))
    info = Provenance(
        str(labels_csv), str(images), str(options.model) if options.model is not None else None,
        meta.model if meta is not None else None, threshold, threshold_from, options.seed, options.max_images,
    )
    write_text(out, render_report(summary, thumbs, info))
    return ReportResult(
        out, summary.rows, summary.statuses["ok"], summary.statuses["error"], len(shown),
        sum(t.problem is not None for t in thumbs.values()),
    )
