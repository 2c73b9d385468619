"""The labels report: one self-contained HTML page that shows what a labels CSV holds.

Owns reading a labels CSV as a stream into a fixed-size summary (counts, a histogram of p_dog, the rows
nearest the threshold, a seeded sample per label, the errors by reason), the thumbnails of the few images
shown, and the page itself: HTML with an inline SVG histogram and embedded JPEGs, no script, nothing loaded
from the network. Memory does not grow with the CSV, and only the images shown are decoded.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from catdog.cpus import usable_cpus
from catdog.errors import CatdogError, printable
from catdog.fsutil import write_text
from catdog.images import DEFAULT_MAX_PIXELS, ImageError, describe_error, load_thumbnail
from catdog.labeling.jobrecord import JobRecord, job_record_path, read_job_record
from catdog.labeling.reading import NEITHER, LabelsReader, check_new_output
from catdog.labeling.runtime import ModelMeta
from catdog.labeling.sources import LocalSource, Source, open_source

DEFAULT_THRESHOLD = 0.5
DEFAULT_IMAGES = 240  # thumbnails on the page: 2/5 the most uncertain, the rest a sample split between the labels
MAX_IMAGES = 1000
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
    pet_threshold: float | None = None  # pet_score below which a row is `neither`, when known (record or model)
    n_pet: int = 0  # rows with pet_score nearest pet_threshold


@dataclass(frozen=True)
class Row:
    path: str
    label: str
    p_dog: float
    pet_score: float | None = None


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
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)  # p_dog of the cat and dog rows
    pet_histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BINS)  # pet_score of every ok row with one
    uncertain: list[Row] = field(default_factory=list)  # cat and dog rows, p_dog nearest the threshold first
    pet_nearest: list[Row] = field(default_factory=list)  # pet_score nearest the pet threshold first
    samples: dict[str, list[Row]] = field(default_factory=dict)  # per label, sorted by path
    reasons: dict[str, ReasonStats] = field(default_factory=dict)
    other_errors: int = 0  # errors whose reason came after MAX_REASONS others
    disagreements: int | None = None  # ok rows labelled against the thresholds (None: positive label unknown)
    pet_scores: int = 0  # ok rows with a pet_score
    legacy: bool = False  # a CSV from before `neither` (five columns, no pet_score)
    sha256: str = ""


class _Candidate:
    """A heap entry ordered in reverse, so the heap's top is the least uncertain row kept."""

    __slots__ = ("key", "row")

    def __init__(self, key: tuple[float, str], row: Row):
        self.key, self.row = key, row

    def __lt__(self, other: _Candidate) -> bool:
        return other.key < self.key


class _Nearest:
    """The k rows whose score is nearest the threshold; ties go to the smaller path, so the choice is stable.

    `bound` is the distance a row must not exceed to be considered, so most rows cost one comparison."""

    def __init__(self, k: int, threshold: float):
        self.k, self.threshold = k, threshold
        self.heap: list[_Candidate] = []
        self.bound = math.inf if k > 0 else -math.inf

    def add(self, score: float, row: Row) -> None:
        # Rounded: scores have 6 decimals, and 0.45 and 0.55 must be equally near 0.5 (in floats they are not).
        key = (round(abs(score - self.threshold), 9), row.path)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, _Candidate(key, row))
        elif key < self.heap[0].key:
            heapq.heapreplace(self.heap, _Candidate(key, row))
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

    def add(self, row: Row) -> None:
        if len(self.rows) < self.k:
            self.rows.append(row)
        elif self.seen == self.next and self.k:
            self.rows[self.rng.randrange(self.k)] = row
            self.next += 1
            self._skip()
        self.seen += 1


def _bin(value: float) -> int:
    b = int(value * HISTOGRAM_BINS)
    return b if b < HISTOGRAM_BINS else HISTOGRAM_BINS - 1


def summarize_labels(csv_path: Path, selection: Selection) -> LabelSummary:
    """One streaming pass over a labels CSV (path,label,p_dog,pet_score,status,error, or the five columns of a
    CSV from before pet_score) into a bounded summary.

    Every row is checked as `merge-labels` checks it (`catdog.labeling.reading`); raises `CatdogError` naming the
    file and line when it is not a labels CSV, or holds a path twice or out of order.
    """
    summary = LabelSummary()
    nearest = _Nearest(selection.n_uncertain, selection.threshold)
    pet_threshold = selection.pet_threshold
    pet_nearest = _Nearest(selection.n_pet if pet_threshold is not None else 0, pet_threshold or 0.0)
    reservoirs: dict[str, _Reservoir] = {}
    t, positive = selection.threshold, selection.positive
    disagreements = 0
    histogram, pet_histogram = summary.histogram, summary.pet_histogram
    with LabelsReader(csv_path) as reader:
        summary.legacy = reader.legacy
        for path, label, p, pet, status, error in reader.rows():
            summary.rows += 1
            summary.statuses[status] += 1
            if status == "ok":
                stats = summary.labels.get(label)
                if stats is None:
                    stats = summary.labels[label] = LabelStats()
                    reservoirs[label] = _Reservoir(selection.n_sample, selection.seed, label)
                # The hot path, per row: no object is made for a row that is not kept.
                stats.count += 1
                if p < stats.p_min:
                    stats.p_min = p
                if p > stats.p_max:
                    stats.p_max = p
                neither = label == NEITHER
                if not neither:
                    histogram[_bin(p)] += 1
                if pet is not None:
                    summary.pet_scores += 1
                    pet_histogram[_bin(pet)] += 1
                    if pet_threshold is not None and abs(pet - pet_threshold) <= pet_nearest.bound:
                        pet_nearest.add(pet, Row(path, label, p, pet))
                if not neither and abs(p - t) <= nearest.bound:
                    nearest.add(p, Row(path, label, p, pet))
                sample = reservoirs[label]
                if sample.seen < sample.k or sample.seen == sample.next:
                    sample.add(Row(path, label, p, pet))
                else:
                    sample.seen += 1
                if positive is not None:
                    if pet_threshold is not None and pet is not None and (pet < pet_threshold) != neither:
                        disagreements += 1
                    elif not neither and (p >= t) != (label == positive):
                        disagreements += 1
            else:
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
        summary.sha256 = reader.sha256
    summary.uncertain = nearest.rows()
    summary.pet_nearest = pet_nearest.rows()
    summary.samples = {label: sorted(r.rows, key=lambda row: row.path) for label, r in sorted(reservoirs.items())}
    summary.disagreements = disagreements if positive is not None else None
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


def histogram_svg(counts: list[int], threshold: float | None, width: int = 640, height: int = 232, score: str = "p_dog",
                  mark: str = "threshold") -> str:
    """Bars of `counts` over equal bins of 0-1 on a log scale (the middle bins are small), the threshold marked
    (when known).

    The threshold's label sits in a band of its own above the bars' counts, so it never covers one."""
    left, right, top, bottom, band = 56, 12, 34, 36, 16
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(counts)
    peak = math.log10(1 + max(counts, default=0)) or 1.0
    bar_w = plot_w / n
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="Histogram of {score}, log scale' + (f', {mark} {threshold:.3f}">' if threshold is not None else '">'),
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
            f"<title>{score} {lo:.2f}-{hi:.2f}: {count:,} images</title></rect>"
        )
        if count:
            parts.append(
                f'<text class="count" x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" font-size="9">{count:,}</text>'
            )
    for tick in range(0, 11, 2):
        x = left + plot_w * tick / 10
        parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#444"/>')
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{tick / 10:.1f}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" font-size="11">{score}</text>')
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">images (log scale)</text>'
    )
    if threshold is None:
        parts.append("</svg>")
        return "\n".join(parts)
    tx = left + plot_w * threshold
    parts.append(f'<line x1="{tx:.1f}" y1="{band - 2}" x2="{tx:.1f}" y2="{top + plot_h}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5,3"/>')
    anchor = "end" if threshold > 0.8 else "start"
    parts.append(
        f'<text class="mark" x="{tx + (-4 if anchor == "end" else 4):.1f}" y="{band - 4}" text-anchor="{anchor}" font-size="11" '
        f'fill="#c0392b">{mark} {threshold:.3f}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _text(value: object) -> str:
    """Any text as HTML: markup escaped, and characters that are invisible or move text shown as their escapes
    (`catdog.errors.printable`, the rule every message follows)."""
    return html.escape(printable(value), quote=True)


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
    pet_threshold: float | None = None
    pet_threshold_from: str = ""
    record: str | None = None  # what the job record beside the CSV says made it, when it describes the CSV


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
        + (f' <span class="pet">pet {row.pet_score:.4f}</span>' if row.pet_score is not None else "")
        +
        f'<div class="path">{path}</div></figcaption></figure>'
    )


def _grid(rows: list[Row], thumbs: dict[str, Thumbnail]) -> str:
    if not rows:
        return '<p class="note">None.</p>'
    return '<div class="grid">\n' + "\n".join(_figure(r, thumbs[r.path]) for r in rows) + "\n</div>"


def _count_cell(n: int) -> str:
    return f'<td class="n" data-count="{n}">{n:,}</td>'


def render_report(summary: LabelSummary, thumbs: dict[str, Thumbnail], info: Provenance) -> str:
    """The page: provenance, counts, histograms, uncertain images, pets nearest the pet threshold, samples per
    label (`neither` its own grid), errors by reason."""
    ok = summary.statuses["ok"]
    e = _text
    pet_line = (
        f'{info.pet_threshold:.4f} <span class="note">({e(info.pet_threshold_from)})</span>' if info.pet_threshold is not None
        else f'<span class="note">{e(info.pet_threshold_from)}</span>'
    )
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
        *([f'<dt>made by</dt><dd id="record">{e(info.record)}</dd>'] if info.record else []),
        f'<dt>threshold</dt><dd id="threshold">{info.threshold:.4f} <span class="note">({e(info.threshold_from)})</span></dd>',
        f'<dt>pet threshold</dt><dd id="pet-threshold">{pet_line}</dd>',
        f"<dt>selection</dt><dd>seed {info.seed}, at most {info.max_images} images shown; thumbnails are of the files as they are now</dd>",
        "</dl></section>",
    ]
    if summary.legacy:
        out.append(
            '<p class="note" id="legacy">This CSV was written before catdog could label an image <code>neither</code> '
            "(five columns, no pet_score): every decoded image is a cat or a dog. Relabel it to get pet scores.</p>"
        )
    if summary.disagreements:
        out.append(
            f'<p class="warn" id="disagreements">{summary.disagreements:,} labels disagree with these thresholds: '
            "the CSV was made with other thresholds or another model.</p>"
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
    out.append("</tbody></table></div>")
    if not summary.legacy:
        out.append(
            '<p class="note"><code>neither</code>: the model found the image to be neither a cat nor a dog (its pet_score '
            "is below the pet threshold); its p_dog says nothing.</p>"
        )
    out.append("</section>")

    cat_dog = sum(s.count for label, s in summary.labels.items() if label != NEITHER)
    out.append('<section id="histogram"><h2>p_dog</h2><p class="note">Cat and dog rows.</p>')
    out.append(histogram_svg(summary.histogram, info.threshold) if cat_dog else '<p class="note">No cat or dog rows.</p>')
    out.append("</section>")
    if summary.pet_scores:
        out.append('<section id="pet-histogram"><h2>pet_score</h2><p class="note">Every ok row with a pet score; '
                   "1 looks most like the cats and dogs the model learned.</p>")
        out.append(histogram_svg(summary.pet_histogram, info.pet_threshold, score="pet_score", mark="pet threshold"))
        out.append("</section>")

    out.append(
        f'<section id="uncertain"><h2>Most uncertain</h2><p class="note">The {len(summary.uncertain)} cat and dog images with p_dog '
        "nearest the threshold, nearest first.</p>"
    )
    out.append(_grid(summary.uncertain, thumbs) + "</section>")

    if summary.pet_scores:
        out.append('<section id="pet-nearest"><h2>Nearest the pet threshold</h2>')
        if info.pet_threshold is None:
            out.append('<p class="note">The pet threshold is unknown: pass <code>--model</code> (or keep the job record beside the CSV).</p>')
        else:
            out.append(
                f'<p class="note">The {len(summary.pet_nearest)} images with pet_score nearest {info.pet_threshold:.4f}, '
                "nearest first: below it an image is labeled neither.</p>"
            )
            out.append(_grid(summary.pet_nearest, thumbs))
        out.append("</section>")

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
    neither: int = 0


def _model_meta(model: Path) -> ModelMeta:
    if not model.exists():
        raise CatdogError(f"model not found: {model}")
    return ModelMeta.read((model if model.is_dir() else model.parent) / "meta.json")


def _usable_record(labels_csv: Path) -> JobRecord | None:
    """The record beside the CSV (`<csv>.job.json`) when it can be read; None otherwise: a broken, foreign or
    older record is no reason to fail a report (whether it still describes the CSV is checked after the pass)."""
    try:
        return read_job_record(labels_csv)
    except (CatdogError, OSError):
        return None


def _selection(options: ReportOptions, meta: ModelMeta | None, record: JobRecord | None, name: str):
    """The thresholds to use and where each came from: --threshold, else the record's, else the model's, else the
    default; the pet threshold from the record (none when its run had `neither` off), else the model's."""
    if options.threshold is not None:
        threshold, threshold_from = options.threshold, "given with --threshold"
    elif record is not None:
        threshold, threshold_from = record.threshold, f"the one the labeling run used, from {name}"
    elif meta is not None:
        threshold, threshold_from = meta.threshold, "the model's, from its meta.json"
    else:
        threshold, threshold_from = DEFAULT_THRESHOLD, "the default: no --model or --threshold given"
    if record is not None:
        pet = record.pet_threshold if record.neither else None
        pet_from = (f"the one the labeling run used, from {name}" if pet is not None
                    else f"none: the labeling run had neither off or a model without pet scores ({name})")
    elif meta is not None:
        pet = meta.pet_threshold
        pet_from = "the model's, from its meta.json" if pet is not None else "none: the model has no pet score"
    else:
        pet, pet_from = None, "unknown: no --model given and no job record beside the CSV"
    n_total = options.max_images
    n_uncertain = n_total * 2 // 5
    n_pet = n_uncertain // 2 if pet is not None else 0
    selection = Selection(
        threshold, n_uncertain - n_pet, (n_total - n_uncertain) // 3, options.seed,
        meta.classes[1] if meta is not None else ("dog" if record is not None else None), pet, n_pet,
    )
    return selection, threshold_from, pet_from


def _describe(record: JobRecord) -> str:
    shard = f", shard {record.shard[0]}/{record.shard[1]}" if record.shard[1] > 1 else ""
    store = f" at {record.endpoint}" if record.endpoint else ""
    return (f"catdog {record.catdog_version} at {record.written}, model {record.model[:19]}…, "
            f"source {record.source}{store}{shard}")


def write_report(labels_csv: Path, images: str, out: Path, options: ReportOptions) -> ReportResult:
    """Summarize `labels_csv` in one pass, decode the images it shows from `images` (a folder or S3 prefix),
    write `out`."""
    out, labels_csv = Path(out), Path(labels_csv)
    check_new_output(out, options.overwrite, "an HTML", labels_csv)
    if not 0 <= options.max_images <= MAX_IMAGES:
        raise CatdogError(f"--max-images {options.max_images}: choose 0 to {MAX_IMAGES}")
    if options.threshold is not None and not 0 < options.threshold < 1:
        raise CatdogError(f"--threshold {options.threshold}: choose a value between 0 and 1")
    meta = _model_meta(options.model) if options.model is not None else None
    source = open_source(images, options.s3_endpoint_url)
    if isinstance(source, LocalSource):
        if not Path(images).exists():
            raise CatdogError(f"images folder not found: {images}")
        if not Path(images).is_dir():
            raise CatdogError(f"--images {images} is a file, not a folder: give the folder the CSV was made from")

    name = job_record_path(labels_csv).name
    record = _usable_record(labels_csv)
    selection, threshold_from, pet_from = _selection(options, meta, record, name)
    summary = summarize_labels(labels_csv, selection)
    if record is not None and record.csv_sha256 != summary.sha256:
        # The record no longer describes the CSV (changed since its run): its thresholds were wrong to use.
        record = None
        selection, threshold_from, pet_from = _selection(options, meta, None, name)
        summary = summarize_labels(labels_csv, selection)

    shown = list(dict.fromkeys(r.path for r in [
        *summary.uncertain, *summary.pet_nearest, *(r for rows in summary.samples.values() for r in rows)
    ]))
    max_pixels = meta.max_pixels if meta is not None else DEFAULT_MAX_PIXELS
    with ThreadPoolExecutor(max_workers=options.workers or usable_cpus()) as pool:
        thumbs = dict(zip(shown, pool.map(lambda rel: thumbnail(source, rel, THUMB_SIDE, max_pixels), shown)))
    info = Provenance(
        str(labels_csv), str(images), str(options.model) if options.model is not None else None,
        meta.model if meta is not None else None, selection.threshold, threshold_from, options.seed, options.max_images,
        selection.pet_threshold, pet_from, _describe(record) if record is not None else None,
    )
    write_text(out, render_report(summary, thumbs, info))
    neither = summary.labels[NEITHER].count if NEITHER in summary.labels else 0
    return ReportResult(
        out, summary.rows, summary.statuses["ok"], summary.statuses["error"], len(shown),
        sum(t.problem is not None for t in thumbs.values()), neither,
    )
