"""Issue 8: data and models go to a real DVC remote and come back in a fresh clone.

A moto S3 server on 127.0.0.1 stands in for S3-compatible storage. The credentials live only in
`.dvc/config.local` (never committed); the endpoint URL is in the committed `.dvc/config`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import aws_free_env, catdog, make_project, moto_s3, run, tiny_overrides

pytestmark = pytest.mark.integration

BUCKET = "catdog-dvc"
REMOTE = "storage"
ACCESS_KEY = "catdog-test-key"
SECRET_KEY = "catdog-test-SECRET-9f3a1c"  # a recognisable string to look for in committed files


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (free port) with one empty bucket; stopped afterwards."""
    with moto_s3(ACCESS_KEY, SECRET_KEY) as (url, client):
        client.create_bucket(Bucket=BUCKET)
        yield url


def offline_env(tmp: Path) -> dict[str, str]:
    """No ambient AWS credentials: only `.dvc/config.local` can supply them."""
    return aws_free_env(tmp)


def set_credentials(project: Path, env: dict[str, str]) -> None:
    run(["dvc", "remote", "modify", "--local", REMOTE, "access_key_id", ACCESS_KEY], cwd=project, env=env)
    run(["dvc", "remote", "modify", "--local", REMOTE, "secret_access_key", SECRET_KEY], cwd=project, env=env)


def git_tracked(project: Path) -> set[str]:
    return set(run(["git", "ls-files"], cwd=project).stdout.split())


def assert_up_to_date(project: Path, env: dict[str, str]) -> None:
    status = run(["dvc", "status", "--json"], cwd=project, env=env)
    assert json.loads(status.stdout or "{}") == {}, status.stdout
    repro = run(["dvc", "repro"], cwd=project, env=env)
    out = repro.stdout + repro.stderr
    assert "Data and pipelines are up to date." in out, out
    assert "Running stage" not in out, out
    for stage in ("fetch", "split", "train", "evaluate", "predict-folder", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in out, out


def test_push_clone_pull_reproduces(tmp_path, tiny_dataset_zip, s3_endpoint):
    env = offline_env(tmp_path)
    origin = make_project(tmp_path / "origin", tiny_overrides(tiny_dataset_zip))

    # Remote: the URL and endpoint are shared (committed); the credentials stay local.
    run(["dvc", "remote", "add", "-d", REMOTE, f"s3://{BUCKET}/cache"], cwd=origin, env=env)
    run(["dvc", "remote", "modify", REMOTE, "endpointurl", s3_endpoint], cwd=origin, env=env)
    set_credentials(origin, env)
    config = (origin / ".dvc" / "config").read_text()
    assert s3_endpoint in config and SECRET_KEY not in config and ACCESS_KEY not in config
    assert SECRET_KEY in (origin / ".dvc" / "config.local").read_text()

    # 1. Run the tiny pipeline, commit the small things, push the big ones.
    run(["dvc", "repro"], cwd=origin, env=env)
    run(["git", "add", "-A"], cwd=origin)
    run(["git", "commit", "-qm", "pipeline run"], cwd=origin)
    tracked = git_tracked(origin)
    assert {"dvc.lock", ".dvc/config", "metrics.json", "data/split/report.json"} <= tracked
    assert ".dvc/config.local" not in tracked
    big = [p for p in tracked if not p.endswith("/.gitignore") and (p.startswith(("data/raw/", "models/", "data/downloads/"))
           or p in {"data/labels.csv", "data/split/train.csv", "data/split/val.csv", "data/split/test.csv"})]
    assert not big, f"data/models committed to git: {big}"
    assert not any(p.endswith(".dvc") for p in tracked), "the raw dataset is one stage output, not per-file .dvc files"
    committed = run(["git", "grep", "-I", "-l", SECRET_KEY, "HEAD"], cwd=origin, check=False)
    assert committed.returncode == 1 and not committed.stdout, f"secret committed in: {committed.stdout}"
    run(["dvc", "push"], cwd=origin, env=env)
    assert json.loads(run(["dvc", "status", "--cloud", "--json"], cwd=origin, env=env).stdout or "{}") == {}

    # 2. Clone elsewhere: without the local credentials the remote refuses; with them, pull restores everything.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(origin), str(clone)])
    assert not (clone / ".dvc" / "config.local").exists()
    assert not any((clone / p).exists() for p in ("models", "data/raw/dataset", "data/raw/weights.h5", "data/labels.csv"))
    no_creds = run(["dvc", "pull"], cwd=clone, env=env, check=False)
    assert no_creds.returncode != 0 and "credentials" in no_creds.stderr, no_creds.stdout + no_creds.stderr
    set_credentials(clone, env)
    run(["dvc", "pull"], cwd=clone, env=env)
    assert not (clone / "data" / "downloads").exists()

    # 3. Up to date there: nothing to run.
    assert_up_to_date(clone, env)

    # The pulled model labels a folder exactly as the original does, and the pulled labels match.
    folder = clone / "data" / "raw" / "dataset"
    catdog("predict-folder", folder, "--model", origin / "models", "--out", tmp_path / "original.csv")
    catdog("predict-folder", folder, "--model", clone / "models", "--out", tmp_path / "pulled.csv")
    original_csv = (tmp_path / "original.csv").read_text()
    assert original_csv.count("\n") == 1 + 2 * (24 + 8) and ",ok," in original_csv  # header + every synthetic image
    assert (tmp_path / "pulled.csv").read_text() == original_csv
    assert (clone / "data" / "labels.csv").read_text() == (origin / "data" / "labels.csv").read_text()

    # `dvc repro --pull` in a second fresh clone: fetches the outputs instead of recomputing them.
    clone2 = tmp_path / "clone2"
    run(["git", "clone", "-q", str(origin), str(clone2)])
    set_credentials(clone2, env)
    repro = run(["dvc", "repro", "--pull"], cwd=clone2, env=env)
    out = repro.stdout + repro.stderr
    assert "Running stage" not in out and "Pulling data for stage: 'train'" in out, out
    assert (clone2 / "models" / "model.keras").read_bytes() == (origin / "models" / "model.keras").read_bytes()
    assert json.loads(run(["dvc", "status", "--json"], cwd=clone2, env=env).stdout or "{}") == {}
    assert os.path.getsize(clone2 / "data" / "labels.csv") > 0
