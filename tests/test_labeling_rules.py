"""Rules every labeling source and engine keeps: only the advertised formats are opened, one run per output,
symlinked folders are labeled once, thread counts follow the CPUs the process may use, and a row's label
agrees with its printed p_dog."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from catdog.cpus import cgroup_quota
from catdog.labeling.labels import Decision, format_row, lock_path, run_lock
from catdog.labeling.sources import LocalSource, path_from_text, path_text
from conftest import catdog, cli_env, make_image

POSTSCRIPT = b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 10 10\n/loop { loop } def\nshowpage\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def read_rows(out: Path) -> list[dict]:
    with open(out, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def fake_gs(tmp_path) -> tuple[dict[str, str], Path]:
    """An environment whose first `gs` on PATH records every call to a log file (and fails)."""
    bin_dir, log = tmp_path / "fake_bin", tmp_path / "gs_calls.log"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\necho \"$@\" >> '{log}'\nexit 1\n")
    gs.chmod(0o755)
    env = cli_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env, log


def test_postscript_and_pdf_named_jpg_never_reach_ghostscript(fake_gs, tiny_bundle, tmp_path):
    env, log = fake_gs
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(EPS)
    (folder / "letter.jpg").write_bytes(POSTSCRIPT)
    (folder / "scan.jpg").write_bytes(PDF)
    make_image(folder / "real.jpg")
    out = tmp_path / "labels.csv"
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, env=env)
    errors = {row["path"]: row["error"] for row in read_rows(out)}
    assert errors == {
        "holiday.jpg": "unsupported format: EPS", "letter.jpg": "unsupported format: EPS",
        "scan.jpg": "not an image (unrecognized format)", "real.jpg": "",
    }
    assert not log.exists(), f"Ghostscript was called: {log.read_text()}"


def test_split_and_every_decoder_refuse_formats_outside_the_promised_six(fake_gs, tmp_path):
    """The same `catdog.images` opener serves split, train, evaluate, labeling and the report."""
    from catdog.images import FORMATS, ImageError, check_image, load_image, open_image

    env, log = fake_gs
    os.environ["PATH"], saved = env["PATH"], os.environ["PATH"]
    try:
        for name, data in (("eps.jpg", EPS), ("ps.jpg", POSTSCRIPT)):
            (tmp_path / name).write_bytes(data)
            assert check_image(data) == "unsupported format: EPS"
            with pytest.raises(ImageError, match="unsupported format: EPS"):
                load_image(tmp_path / name, 8)
            with pytest.raises(ImageError, match="unsupported format: EPS"):
                open_image(tmp_path / name)
        Image.new("RGB", (8, 8)).save(tmp_path / "pic.tga", format="TGA")  # Pillow reads TGA, the README does not promise it
        with pytest.raises(ImageError):
            load_image(tmp_path / "pic.tga", 8)
    finally:
        os.environ["PATH"] = saved
    assert FORMATS == ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
    assert not log.exists()


def test_a_second_run_on_the_same_output_fails_at_once(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "labels.csv"
    with run_lock(out):
        result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, "--resume", check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: another run is writing {out} (it holds {lock_path(out)}); wait for it to finish"
    assert not out.exists() and not lock_path(out).exists()
    catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out)
    assert [r["path"] for r in read_rows(out)] == ["a.jpg"] and not lock_path(out).exists()


def test_a_run_killed_with_sigkill_leaves_no_lock_that_blocks_the_next(tiny_bundle, tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    out = tmp_path / "labels.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from catdog.labeling.labels import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out, check=False).returncode == 1
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert lock_path(out).exists(), "SIGKILL leaves the file; the kernel released the lock"
    catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", out)
    assert len(read_rows(out)) == 1


@pytest.fixture
def linked(tmp_path) -> Path:
    """photos/ with 2023 -> ../archive/2023 (2 photos), a second link to it, and a link back to photos/ itself."""
    archive = tmp_path / "archive" / "2023"
    make_image(archive / "a.jpg", seed=1)
    make_image(archive / "deeper" / "b.jpg", seed=2)
    photos = tmp_path / "photos"
    make_image(photos / "top.jpg")
    (photos / "2023").symlink_to(archive)
    (photos / "zz_again").symlink_to(archive)
    (photos / "2023_loop").symlink_to(photos)
    return photos


def test_photos_under_a_symlinked_folder_are_labeled_once(linked, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    catdog("predict-folder", linked, "--model", tiny_bundle, "--out", out)
    rows = {r["path"]: (r["status"], r["error"]) for r in read_rows(out)}
    assert rows == {
        "2023/a.jpg": ("ok", ""),
        "2023/deeper/b.jpg": ("ok", ""),
        "2023_loop": ("error", "symlink to a folder already listed (the labeled folder itself)"),
        "top.jpg": ("ok", ""),
        "zz_again": ("error", "symlink to a folder already listed (2023)"),
    }


def test_no_follow_links_keeps_symlinked_folders_as_error_rows(linked, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    catdog("predict-folder", linked, "--model", tiny_bundle, "--out", out, "--no-follow-links")
    rows = {r["path"]: r["error"] for r in read_rows(out)}
    assert rows == {"2023": "symlink to a folder (not followed)", "2023_loop": "symlink to a folder (not followed)",
                    "top.jpg": "", "zz_again": "symlink to a folder (not followed)"}


def test_a_loop_of_links_between_folders_terminates_with_each_file_once(tmp_path):
    make_image(tmp_path / "a" / "x.jpg")
    make_image(tmp_path / "b" / "y.jpg")
    (tmp_path / "a" / "to_b").symlink_to(tmp_path / "b")
    (tmp_path / "b" / "to_a").symlink_to(tmp_path / "a")
    listing = LocalSource(str(tmp_path)).list()
    assert listing.paths == ["a/to_b", "a/x.jpg", "b/to_a", "b/y.jpg"]
    assert listing.problems == {"a/to_b": "symlink to a folder already listed (b)", "b/to_a": "symlink to a folder already listed (a)"}


@pytest.fixture
def odd_tree(tmp_path) -> Path:
    """A folder with what a listing must get right: files at every depth, folders whose names sort around "/",
    many subfolders, an empty one, symlinked folders inside and outside the tree (sorting before and after the
    real path, a link back to the root, a loop between two folders, one inside a deep folder), a broken link, a
    FIFO, the run's own files, a backslash and an undecodable byte in names."""
    root = tmp_path / "photos"
    outside = tmp_path / "outside"
    for rel in ["top.jpg", ".hidden.jpg", "a/1.jpg", "a/b/c/deep.jpg", "a-b/x.jpg", "a.b/y.jpg", "h\\x.jpg",
                *(f"s{i:02d}/{k}.jpg" for i in range(12) for k in range(3)), "s03/t/u/v.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (outside / "sub").mkdir(parents=True)
    (outside / "o.jpg").write_bytes(b"x")
    (outside / "sub" / "p.jpg").write_bytes(b"x")
    (outside / "back").symlink_to(root)
    (root / "empty").mkdir()
    (root / "0first").symlink_to(root / "s05")
    (root / "zz_out").symlink_to(outside)
    (root / "zz_out_again").symlink_to(outside / "sub")
    (root / "loop").symlink_to(root)
    (root / "s03" / "t" / "to_a").symlink_to(root / "a")
    (root / "s07" / "to_s08").symlink_to(root / "s08")
    (root / "s08" / "to_s07").symlink_to(root / "s07")
    (root / "broken").symlink_to(tmp_path / "nowhere")
    os.mkfifo(root / "s01" / "fifo")
    (root / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"x")
    (root / "labels.csv").write_text("path\n")
    (root / "labels.csv.partial").write_text("path\n")
    return root


@pytest.mark.parametrize("width", [1, 2, 3, 8, 100])
def test_a_folder_listed_in_parts_elsewhere_gives_the_listing_of_one_process(odd_tree, width):
    """The Ray engine lists a folder's subfolders on the cluster (ten million files are 11 s of one process): the
    driver lists the top levels, `width` parts walk the real folders under them, the driver joins the parts and
    enters the symlinked folders, and the listing (paths and problems, own files left out) is one process's."""
    from catdog.labeling import sources
    from catdog.labeling.labels import own_files
    from conftest import InProcessSpread

    skip = own_files(odd_tree / "labels.csv")
    whole = LocalSource(str(odd_tree)).list(skip=skip)
    assert "labels.csv" not in whole.paths and "s05/0.jpg" in whole.paths and "zz_out/sub/p.jpg" in whole.paths
    assert whole.problems["0first"] == "symlink to a folder already listed (s05)"
    spread = InProcessSpread(width)
    listing = LocalSource(str(odd_tree)).list(skip=skip, spread=spread)
    assert listing.paths == whole.paths
    assert listing.problems == whole.problems
    if width == 1:
        assert spread.calls == []
        return
    (calls,) = spread.calls
    folders = [prefix for _, part, *_ in calls for _, prefix in part]
    assert len(calls) == min(width, sources.SPREAD_PARTS, len(folders)) and all(part for _, part, *_ in calls)
    assert len(folders) == len(set(folders)) and not any(p.startswith(("0first", "loop", "zz")) for p in folders)
    # Looked for down to where there are enough folders for the parts: 16 at the top, 2 one and two levels down.
    assert len(folders) == {2: 16, 3: 16, 8: 16, 100: 2}[width]
    assert LocalSource(str(odd_tree)).list(recursive=False, skip=skip, spread=spread) == LocalSource(str(odd_tree)).list(recursive=False, skip=skip)


def test_a_folder_met_twice_by_parts_is_listed_again_in_one_process(odd_tree, monkeypatch):
    """A real folder two parts both entered (a bind mount) is listed under the first path in the walk's order,
    which parts walked side by side cannot know: the listing is redone in one process."""
    from catdog.labeling import sources
    from conftest import InProcessSpread

    lists = []
    real_list = sources.LocalSource.list
    monkeypatch.setattr(sources.LocalSource, "list", lambda self, *a, **kw: lists.append(kw.get("spread")) or real_list(self, *a, **kw))

    class Doubling(InProcessSpread):
        def __call__(self, fn, calls):
            parts = super().__call__(fn, calls)
            parts[-1].seen.update(parts[0].seen)  # the last part entered a folder the first one did
            return parts

    whole = LocalSource(str(odd_tree)).list()
    lists.clear()
    listing = LocalSource(str(odd_tree)).list(spread=Doubling(4))
    assert (listing.paths, listing.problems) == (whole.paths, whole.problems)
    assert len(lists) == 2 and lists[1] is None, "walked again without the cluster"


def _other_node_os(field: int, by: int = 7):
    """The `os` module as another node of the cluster sees the shared folder: every stat's field `field` (1:
    st_ino, 2: st_dev) moved by `by`."""
    import types

    def shifted(st: os.stat_result) -> os.stat_result:
        values = list(st)
        values[field] += by
        return os.stat_result(values)

    class Entry:
        def __init__(self, entry):
            self._entry = entry

        def __getattr__(self, name):
            return getattr(self._entry, name)

        def stat(self, follow_symlinks=True):
            return shifted(self._entry.stat(follow_symlinks=follow_symlinks))

    class Scan:
        def __init__(self, path):
            self._it = os.scandir(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._it.close()

        def __iter__(self):
            return (Entry(entry) for entry in self._it)

    other = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    other.scandir, other.stat = Scan, lambda path, *a, **kw: shifted(os.stat(path, *a, **kw))
    return other


@pytest.mark.parametrize("node", ["its own device number", "another tree at the same path"])
def test_parts_on_another_node_give_the_listing_of_one_process(odd_tree, monkeypatch, node):
    """A shared file system may have another device number on each node (NFS numbers its mounts as they come):
    the parts give their folders in the driver's numbers, so links back into the tree are still recognised. A
    node whose folder at that path is another tree (other inode numbers) cannot: the driver walks it alone."""
    from catdog.labeling import sources
    from conftest import InProcessSpread

    lists = []
    real_list = sources.LocalSource.list
    monkeypatch.setattr(sources.LocalSource, "list", lambda self, *a, **kw: lists.append(kw.get("spread")) or real_list(self, *a, **kw))
    other = _other_node_os(2 if node == "its own device number" else 1)

    class OtherNode(InProcessSpread):
        def __call__(self, fn, calls):
            with monkeypatch.context() as m:
                m.setattr(sources, "os", other)
                return super().__call__(fn, calls)

    whole = LocalSource(str(odd_tree)).list()
    lists.clear()
    listing = LocalSource(str(odd_tree)).list(spread=OtherNode(4))
    assert (listing.paths, listing.problems) == (whole.paths, whole.problems)
    assert len(lists) == (1 if node == "its own device number" else 2)


def test_a_relative_folder_is_listed_by_parts_working_elsewhere(odd_tree, monkeypatch):
    """A Ray worker does not share the driver's working folder: parts get absolute paths."""
    from conftest import InProcessSpread

    class Elsewhere(InProcessSpread):
        def __call__(self, fn, calls):
            with monkeypatch.context() as m:
                m.chdir("/")
                return super().__call__(fn, calls)

    monkeypatch.chdir(odd_tree.parent)
    spread = Elsewhere(4)
    listing = LocalSource(odd_tree.name).list(spread=spread)
    whole = LocalSource(odd_tree.name).list()
    assert (listing.paths, listing.problems) == (whole.paths, whole.problems) and spread.calls


def test_a_part_on_a_node_without_the_folder_stops_the_listing_with_one_line(tmp_path):
    from catdog.errors import CatdogError
    from catdog.labeling.sources import list_folders

    with pytest.raises(CatdogError, match="folder not found on every node of the cluster: .*same path on each node"):
        list_folders(LocalSource(str(tmp_path / "gone")), [(str(tmp_path / "gone" / "a"), "a/")], True, None, {})


DECODE_THREADS = """
import sys, threading
from pathlib import Path
import catdog.labeling.engines as engines
from catdog.labeling.predict import PredictOptions, predict
seen = set()
real = engines.load_image
def spy(*args, **kwargs):
    seen.add(threading.get_ident())
    return real(*args, **kwargs)
engines.load_image = spy
predict(PredictOptions(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), batch_size=32))
print(len(seen))
"""


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_under_taskset_one_cpu_the_labeler_uses_one_decode_thread(tiny_bundle, tmp_path):
    for i in range(64):
        make_image(tmp_path / "in" / f"{i:02d}.jpg", seed=i)
    runs = {}
    for cpus in ("0", "0,1"):
        if cpus == "0,1" and len(os.sched_getaffinity(0)) < 2:
            continue
        out = tmp_path / f"labels-{cpus}.csv"
        result = subprocess.run(
            ["taskset", "-c", cpus, sys.executable, "-c", DECODE_THREADS, str(tmp_path / "in"), str(tiny_bundle), str(out)],
            capture_output=True, text=True, env=cli_env(), timeout=120, check=True,
        )
        runs[cpus] = int(result.stdout.strip().splitlines()[-1])
    assert runs["0"] == 1
    if "0,1" in runs:
        assert runs["0,1"] == 2, "the spy sees every decode thread"


def test_the_cgroup_v2_cpu_quota_caps_the_count(tmp_path):
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "kubepods" / "cpu.max").write_text("400000 100000\n")
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    membership = tmp_path / "cgroup"
    membership.write_text("0::/kubepods/pod1\n")
    assert cgroup_quota(tmp_path, membership) == 1.5
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path, membership) == 4.0
    (tmp_path / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path, membership) is None


@pytest.mark.parametrize("p_dog, threshold, label, printed", [
    (0.4999996, 0.5, "dog", "0.500000"),
    (0.4999994, 0.5, "cat", "0.499999"),
    (0.5, 0.5, "dog", "0.500000"),
    (0.7300004, 0.73, "dog", "0.730000"),
])
def test_the_label_agrees_with_the_printed_p_dog(p_dog, threshold, label, printed):
    assert format_row("x.jpg", p_dog, None, None, Decision(("cat", "dog"), threshold)) == ("x.jpg", label, printed, "", "ok", "")


def test_a_fifo_put_in_a_files_place_after_listing_is_an_error_row_not_a_hang(tmp_path):
    from catdog.labeling.engines import decode

    make_image(tmp_path / "a.jpg")
    source = LocalSource(str(tmp_path))
    assert source.list().paths == ["a.jpg"]
    (tmp_path / "a.jpg").unlink()
    os.mkfifo(tmp_path / "a.jpg")
    assert decode(source, "a.jpg", None, 8, 10_000) == "not a regular file (a FIFO)"


def test_a_cgroup_v1_cfs_quota_caps_the_count_too(tmp_path):
    """Older Docker engines (cgroup v1): `docker run --cpus 1.5` sets cpu.cfs_quota_us / cpu.cfs_period_us."""
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("150000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    membership = tmp_path / "cgroup"
    membership.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_quota(tmp_path, membership) == 1.5
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path, membership) is None


def test_a_real_folder_is_listed_under_its_own_path_even_when_a_link_to_it_sorts_first(tmp_path):
    make_image(tmp_path / "c" / "d" / "cat.jpg")
    (tmp_path / "b").symlink_to(tmp_path / "c" / "d")
    listing = LocalSource(str(tmp_path)).list()
    assert listing.paths == ["b", "c/d/cat.jpg"]
    assert listing.problems == {"b": "symlink to a folder already listed (c/d)"}


def test_a_link_to_the_runs_own_working_file_is_not_labelled(tiny_bundle, tmp_path):
    make_image(tmp_path / "photos" / "a.jpg")
    out = tmp_path / "out" / "labels.csv"
    out.parent.mkdir()
    (tmp_path / "photos" / "sneaky.jpg").symlink_to(out.with_name("labels.csv.partial"))
    (tmp_path / "photos" / "sneaky_lock.jpg").symlink_to(lock_path(out))
    catdog("predict-folder", tmp_path / "photos", "--model", tiny_bundle, "--out", out)
    assert [r["path"] for r in read_rows(out)] == ["a.jpg"]


@pytest.mark.parametrize(
    "pet_score, pet_threshold, label",
    [
        (0.2999996, 0.3, "dog"),  # printed 0.300000: at the threshold keeps its label
        (0.2999994, 0.3, "neither"),  # printed 0.299999
        (0.01, None, "dog"),  # outcome off: never neither
        (None, 0.3, "dog"),  # a model without a pet score: never neither
    ],
)
def test_neither_is_decided_on_the_printed_pet_score_and_can_be_turned_off(pet_score, pet_threshold, label):
    row = format_row("x.jpg", 0.9, pet_score, None, Decision(("cat", "dog"), 0.5, pet_threshold))
    printed = "" if pet_score is None else f"{pet_score:.6f}"
    assert row == ("x.jpg", label, "0.900000", printed, "ok", "")


def test_error_rows_have_no_label_and_no_scores():
    assert format_row("x.jpg", None, None, "empty file", Decision(("cat", "dog"), 0.5, 0.3)) == ("x.jpg", "", "", "", "error", "empty file")


@pytest.mark.parametrize("name", ["a.jpg", "lit\\udcffb.jpg", os.fsdecode(b"lit\xffb.jpg"), "a\\b", "x\\\\y", os.fsdecode(b"caf\xe9.jpg")])
def test_path_text_is_valid_utf8_and_maps_back_to_exactly_one_name(name):
    text = path_text(name)
    text.encode("utf-8")  # no surrogates left
    assert path_from_text(text) == name


def test_a_literal_escape_in_a_name_and_an_undecodable_byte_get_different_rows(tmp_path, tiny_bundle):
    root = tmp_path / "photos"
    root.mkdir()
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(image, "JPEG")
    for raw in (b"lit\\udcffb.jpg", b"lit\xffb.jpg", b"caf\xe9.jpg"):
        (root / os.fsdecode(raw)).write_bytes(image.getvalue())
    out = tmp_path / "labels.csv"
    catdog("predict-folder", root, "--model", tiny_bundle, "--out", out)
    paths = [row["path"] for row in read_rows(out)]
    assert sorted(paths) == paths and len(set(paths)) == 3
    assert set(paths) == {"lit\\\\udcffb.jpg", "lit\\xffb.jpg", "caf\\xe9.jpg"}
    assert all(row["status"] == "ok" for row in read_rows(out))  # every one found again by its text


def test_shards_of_names_holding_a_literal_escape_or_an_undecodable_byte_merge_into_the_unsharded_csv(tmp_path, tiny_bundle):
    """Each name's text shards the same way in predict-folder and in merge-labels (no 'belongs to shard 1/2')."""
    root = tmp_path / "photos"
    root.mkdir()
    image = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(image, "JPEG")
    for raw in (b"lit\\udcffb.jpg", b"lit\xffb.jpg", b"back\\slash.jpg", b"x\\xffy.jpg", b"plain.jpg"):
        (root / os.fsdecode(raw)).write_bytes(image.getvalue())
    catdog("predict-folder", root, "--model", tiny_bundle, "--out", tmp_path / "all.csv")
    for only in (None, b"lit\\udcffb.jpg"):
        if only is not None:  # the case: a folder holding only the literal name
            for path in root.iterdir():
                if os.fsencode(path.name) != only:
                    path.unlink()
            catdog("predict-folder", root, "--model", tiny_bundle, "--out", tmp_path / "all.csv", "--overwrite")
        shards = [tmp_path / f"s{k}.csv" for k in range(2)]
        for k, shard in enumerate(shards):
            catdog("predict-folder", root, "--model", tiny_bundle, "--out", shard, "--shard", f"{k}/2", "--overwrite")
        catdog("merge-labels", tmp_path / "merged.csv", *shards, "--overwrite")
        assert (tmp_path / "merged.csv").read_bytes() == (tmp_path / "all.csv").read_bytes()


def test_format_rows_writes_exactly_what_the_csv_module_writes_for_every_kind_of_field():
    import random

    from catdog.labeling.labels import csv_writer, format_rows

    rng = random.Random(7)
    alphabet = ['a', 'é', '猫', ',', '"', '\r', '\n', ' ', '\t', '\\', "'", '=', '#', '\udcff', '\x00']
    names = ["plain.jpg", "", " ", '"', '""', ",", "\r\n", "a\rb", "=1+2", "\\xff"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(400)
    ]
    for classes in (("cat", "dog"), ("c,at", 'd"og')):
        decision = Decision(classes, 0.5, 0.3)
        batch = [
            (name, rng.random(), rng.choice([None, rng.random()]), rng.choice([None, None, name or "x", 'bad, "quoted"\r\nreason']))
            for name in names
        ]
        text = io.StringIO()
        writer = csv_writer(text)
        for rel, p_dog, pet, reason in batch:
            writer.writerow(format_row(rel, p_dog if reason is None else None, pet if reason is None else None, reason, decision))
        batch = [(rel, p if r is None else None, q if r is None else None, r) for rel, p, q, r in batch]
        data, counts, last = format_rows(batch, decision)
        assert data == text.getvalue().encode("utf-8", "backslashreplace")
        assert (counts.ok + counts.error, last) == (len(batch), batch[-1][0])
    assert format_rows([], Decision(("cat", "dog"), 0.5))[0] == b""
