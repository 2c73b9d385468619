"""`predict-folder --update`: only new and changed files are decoded, and the CSV is byte for byte a fresh run's."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import aws_free_env, catdog, cli_env, make_image, moto_s3


class Counting:
    """A predictor that counts the images it scores (an update must decode only new and changed files); with
    `pets`, one whose model also gives a pet score (1 - p_dog / 2) and whose meta has a pet threshold."""

    def __init__(self, inner, pets: bool = False):
        self.inner, self.meta, self.images, self.pets = inner, inner.meta, 0, pets
        if pets:
            self.meta = dataclasses.replace(inner.meta, pet_threshold=0.76)

    def predict(self, images):
        self.images += len(images)
        p_dog, pet = self.inner.predict(images)
        return (p_dog, 1 - p_dog / 2) if self.pets else (p_dog, pet)


def label(folder, bundle: Path, out: Path, pets: bool = False, **options):
    """Run predict() in this process; return (summary, images decoded, notes said)."""
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor

    counting, notes = Counting(load_predictor(bundle), pets), []
    summary = predict(PredictOptions(str(folder), bundle, out, batch_size=4, workers=1, **options), counting, notes.append)
    return summary, counting.images, notes


def fresh(folder, bundle: Path, tmp: Path, pets: bool = False, **options) -> bytes:
    """The CSV a fresh full run writes on `folder` now."""
    out = tmp / f"fresh-{time.monotonic_ns()}.csv"
    label(folder, bundle, out, pets, **options)
    return out.read_bytes()


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    for i in range(12):
        make_image(folder / ("sub" if i % 3 else "") / f"{i:02d}.bmp", color=(20 * i, 90, 250 - 20 * i), seed=i, size=(16, 12))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_unchanged_folder_decodes_nothing_and_keeps_every_row(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    before = out.read_bytes()
    summary, decoded, notes = label(photos, tiny_bundle, out, update=True)
    assert decoded == 0 and notes == []
    assert (summary.kept, summary.labeled_now, summary.dropped) == (12, 1, 0), "the error row is labeled again"
    assert out.read_bytes() == before


def test_added_modified_deleted_and_renamed_files_are_the_only_ones_decoded(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    make_image(photos / "sub" / "new.bmp", color=(10, 200, 10), size=(16, 12))  # added
    make_image(photos / "03.bmp", color=(250, 250, 0), size=(16, 12), seed=99)  # same size, new bytes
    bump_mtime(photos / "03.bmp")  # (a coarse clock could leave the mtime as it was)
    bump_mtime(photos / "sub" / "02.bmp")  # same bytes, new mtime
    make_image(photos / "sub" / "04.bmp", size=(20, 12))  # new size
    (photos / "sub" / "05.bmp").unlink()  # deleted
    (photos / "sub" / "07.bmp").rename(photos / "sub" / "renamed.bmp")  # renamed: one dropped, one added
    assert (photos / "03.bmp").stat().st_size == (photos / "00.bmp").stat().st_size
    summary, decoded, _ = label(photos, tiny_bundle, out, update=True)
    assert decoded == 5  # new, 03, 02, 04, renamed
    assert (summary.kept, summary.labeled_now, summary.dropped) == (7, 6, 2)
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_the_summary_line_says_kept_labeled_dropped(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out)
    (photos / "00.bmp").unlink()
    make_image(photos / "zz.bmp", size=(16, 12))
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--update")
    assert result.stderr.strip().splitlines()[-1].startswith("updated 13 rows: kept 11, labeled 2, dropped 1; 12 ok, 1 error")
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_a_threshold_change_decodes_nothing_and_relabels_from_the_printed_scores(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    for threshold in (0.000001, 0.999999, 0.4):
        summary, decoded, _ = label(photos, tiny_bundle, out, update=True, threshold=threshold)
        assert decoded == 0 and summary.kept == 12
        assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path, threshold=threshold)


def test_the_pet_threshold_and_no_neither_change_decodes_nothing(tmp_path, tiny_bundle):
    folder = tmp_path / "in"
    for i in range(8):
        make_image(folder / f"{i}.png", color=(30 * i, 120, 200 - 20 * i), seed=i)
    out = tmp_path / "labels.csv"
    label(folder, tiny_bundle, out, pets=True)
    assert b",neither," in out.read_bytes()
    for options in ({"pet_threshold": 0.999}, {"pet_threshold": 0.001}, {"neither": False}, {}, {}):
        summary, decoded, _ = label(folder, tiny_bundle, out, pets=True, update=True, **options)
        assert decoded == 0 and out.read_bytes() == fresh(folder, tiny_bundle, tmp_path, pets=True, **options)
        assert summary.neither == (None if options.get("neither") is False else out.read_bytes().count(b",neither,"))


def test_resuming_inside_a_run_of_kept_rows_keeps_exactly_the_later_ones(photos, tiny_bundle, tmp_path):
    from catdog.labeling.update import Kept, after, identified, plan_update
    from catdog.labeling.sources import LocalSource

    out = tmp_path / "labels.csv"
    summary, _, _ = label(photos, tiny_bundle, out)
    source = LocalSource(str(photos))
    listing = identified(source, source.list())
    key = json.loads((tmp_path / "labels.csv.files").read_bytes().split(b"\n", 1)[0])["key"]
    plan = plan_update(out, key, listing, overwrite=False)
    assert plan.kept == 12 and plan.note is None
    rows = out.read_bytes().split(b"\r\n")[1:-1]
    middle = listing.paths[5]
    steps = after(plan, middle)
    kept = [step for step in steps if isinstance(step, Kept)]
    assert sum(step.rows for step in kept) == sum(1 for rel in listing.paths if rel > middle and rel != "broken.jpg")
    later = b"".join(row + b"\r\n" for row in rows if row.split(b",")[0].decode() > middle and b",ok," in row)
    with open(out, "rb") as fh:
        copied = b""
        for step in kept:
            fh.seek(step.start)
            copied += fh.read(step.end - step.start)
    assert copied == later


def test_another_bundle_relabels_every_file_and_says_so(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    other = tmp_path / "other-bundle"
    shutil.copytree(tiny_bundle, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "model": "retrained"}))
    summary, decoded, notes = label(photos, other, out, update=True)
    assert decoded == 12 and summary.kept == 0
    assert notes == ["relabeling every file: the model bundle differs from the one that labeled it"]
    assert out.read_bytes() == fresh(photos, other, tmp_path)


def test_a_folder_that_shrinks_to_nothing_drops_every_row(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    shutil.rmtree(photos)
    photos.mkdir()
    summary, decoded, _ = label(photos, tiny_bundle, out, update=True)
    assert (decoded, summary.kept, summary.dropped) == (0, 0, 13)
    assert out.read_bytes() == b"path,label,p_dog,pet_score,status,error\r\n" == fresh(photos, tiny_bundle, tmp_path)


def test_a_csv_from_an_older_catdog_is_relabeled_with_a_line_saying_why(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    out.write_text("path,label,p_dog,status,error\r\n00.bmp,cat,0.100000,ok,\r\n")  # five columns, no sidecar
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--update")
    assert f"relabeling every file: {out} has no labels.csv.files (written by an older catdog?)" in result.stderr.splitlines()
    assert "kept 0, labeled 13, dropped 0" in result.stderr
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_a_csv_edited_by_hand_is_refused_unless_overwrite(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    edited = out.read_bytes() + b"zz-added-by-hand.bmp,dog,0.900000,,ok,\r\n"
    out.write_bytes(edited)
    result = catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--update", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {out} was changed after catdog wrote it (its sha256 is not the one labels.csv.files records), so --update "
        "cannot tell which rows to keep; pass --overwrite to relabel every file and replace it"
    ]
    assert out.read_bytes() == edited
    summary, decoded, notes = label(photos, tiny_bundle, out, update=True, overwrite=True)
    assert decoded == 12 and notes == [f"relabeling every file: {out} was changed after catdog wrote it"]
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_a_sidecar_that_does_not_match_its_csv_relabels_every_file(photos, tiny_bundle, tmp_path):
    """A sidecar of another CSV (e.g. copied beside it) never keeps a row it does not describe."""
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    (tmp_path / "labels.csv.files").write_bytes(b'{"version": 99}\n')
    _, decoded, notes = label(photos, tiny_bundle, out, update=True)
    assert decoded == 12 and notes == [f"relabeling every file: {tmp_path / 'labels.csv.files'} is unreadable or from another catdog version"]
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_a_first_update_without_a_csv_labels_everything(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    summary, decoded, notes = label(photos, tiny_bundle, out, update=True)
    assert decoded == 12 and notes == [] and summary.kept == 0
    assert out.read_bytes() == fresh(photos, tiny_bundle, tmp_path)


def test_other_recursion_relabels_and_each_shard_updates_its_own_csv(photos, tiny_bundle, tmp_path):
    out = tmp_path / "labels.csv"
    label(photos, tiny_bundle, out)
    _, _, notes = label(photos, tiny_bundle, out, update=True, recursive=False)
    assert notes == ["relabeling every file: it was labeled with the other --recursive/--no-recursive"]
    for k in range(2):
        label(photos, tiny_bundle, tmp_path / f"s{k}.csv", shard=(k, 2))
    make_image(photos / "sub" / "added.bmp", size=(16, 12))
    decoded = 0
    for k in range(2):
        summary, n, notes = label(photos, tiny_bundle, tmp_path / f"s{k}.csv", shard=(k, 2), update=True)
        decoded += n
        assert notes == [] and (tmp_path / f"s{k}.csv").read_bytes() == fresh(photos, tiny_bundle, tmp_path, shard=(k, 2))
    assert decoded == 1


def test_the_sidecar_beside_a_csv_inside_the_folder_is_never_labeled(photos, tiny_bundle, tmp_path):
    out = photos / "labels.csv"
    label(photos, tiny_bundle, out)
    summary, decoded, _ = label(photos, tiny_bundle, out, update=True)
    assert decoded == 0 and summary.ok + summary.error == 13 and (photos / "labels.csv.files").exists()


def test_kill_9_in_the_middle_of_an_update_leaves_the_old_csv_and_a_rerun_gives_a_fresh_runs_csv(tiny_bundle, tmp_path):
    folder = tmp_path / "many"
    for i in range(40):
        make_image(folder / "old" / f"{i:03d}.png", size=(12, 12), color=(i, 90, 200), seed=i)
    out = tmp_path / "labels.csv"
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out)
    before, sidecar = out.read_bytes(), (tmp_path / "labels.csv.files").read_bytes()
    for i in range(1500):
        make_image(folder / "new" / f"{i:04d}.png", size=(12, 12), color=(i % 256, 40, 90), seed=1000 + i)
    args = [sys.executable, "-m", "catdog", "predict-folder", str(folder), "--model", str(tiny_bundle), "--out", str(out),
            "--update", "--batch-size", "1", "--workers", "1"]
    progress = tmp_path / "labels.csv.progress.json"
    # Progress saved after every batch, so the first save comes long before the update could finish.
    proc = subprocess.Popen(args, env={**cli_env(), "CATDOG_PROGRESS_SECONDS": "0"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not progress.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the update must be killed mid-way"
    assert out.read_bytes() == before and (tmp_path / "labels.csv.files").read_bytes() == sidecar, "the old CSV is untouched"

    refused = catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, "--update", check=False)
    assert refused.returncode == 1 and "pass --update --resume to continue it or --update --overwrite" in refused.stderr
    resumed = catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, "--update", "--resume", "--batch-size", "7")
    assert "kept 40, labeled " in resumed.stderr and not progress.exists()
    expected = fresh(folder, tiny_bundle, tmp_path)
    assert out.read_bytes() == expected
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", out, "--update")  # and a plain rerun after it
    assert out.read_bytes() == expected


@pytest.mark.integration
def test_an_s3_object_changed_in_place_is_the_only_one_labeled_again(tiny_bundle, tmp_path, monkeypatch):
    from catdog.labeling import sources

    folder = tmp_path / "photos"
    for i in range(6):
        make_image(folder / f"{i}.png", color=(40 * i, 90, 200), seed=i)
    with moto_s3() as (url, client):
        client.create_bucket(Bucket="pets")
        for path in sorted(folder.iterdir()):
            client.put_object(Bucket="pets", Key=f"in/{path.name}", Body=path.read_bytes())
        for key, value in aws_free_env(tmp_path, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s").items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sources, "_FILESYSTEMS", {})
        out = tmp_path / "labels.csv"
        label("s3://pets/in", tiny_bundle, out, s3_endpoint_url=url)
        changed = make_image(tmp_path / "changed.png", color=(250, 10, 10), seed=7)
        client.put_object(Bucket="pets", Key="in/2.png", Body=changed.read_bytes())
        client.delete_object(Bucket="pets", Key="in/4.png")
        summary, decoded, notes = label("s3://pets/in", tiny_bundle, out, s3_endpoint_url=url, update=True)
        assert (decoded, summary.kept, summary.dropped, notes) == (1, 4, 1, [])
        assert out.read_bytes() == fresh("s3://pets/in", tiny_bundle, tmp_path, s3_endpoint_url=url)
        _, decoded, _ = label("s3://pets/in", tiny_bundle, out, s3_endpoint_url=url, update=True)
        assert decoded == 0


@pytest.mark.integration
def test_dvc_repro_after_photos_arrive_in_the_named_folder_labels_only_those(tmp_path, tiny_dataset_zip):
    from conftest import make_project, run, tiny_overrides

    project = make_project(tmp_path / "project", {**tiny_overrides(tiny_dataset_zip), "predict": {"folder": "inbox my photos"}})
    inbox = project / "inbox my photos"
    for i in range(6):
        make_image(inbox / f"{i}.png", color=(40 * i, 90, 200), seed=i)
    first = run(["dvc", "repro"], cwd=project)
    assert "kept 0, labeled 6, dropped 0" in first.stdout + first.stderr
    labels = project / "data/labels.csv"
    for i in range(6, 8):
        make_image(inbox / f"{i}.png", color=(200, 90, 40 * i), seed=i)
    (inbox / "0.png").unlink()
    second = run(["dvc", "repro"], cwd=project)
    output = second.stdout + second.stderr
    assert "Running stage 'predict-folder'" in output and "Running stage 'train'" not in output
    assert "kept 5, labeled 2, dropped 1" in output
    catdog("predict-folder", inbox, "--model", project / "models", "--out", tmp_path / "fresh.csv")
    assert labels.read_bytes() == (tmp_path / "fresh.csv").read_bytes()
    third = run(["dvc", "repro"], cwd=project)
    assert "Data and pipelines are up to date." in third.stdout
