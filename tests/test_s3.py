"""S3 prefixes as labeling sources, against a moto S3 server on 127.0.0.1: the same rows as the local folder, for
both engines; a missing bucket is a one-line error; an object that vanishes mid-run is an error row."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import aws_free_env, catdog, moto_s3

pytestmark = pytest.mark.integration

BUCKET = "catdog-photos"
PREFIX = "batch 1/photos"  # a space: keys are not URLs


@pytest.fixture(scope="module")
def s3(real_photos):
    """A moto server on a free loopback port holding `real_photos` under s3://BUCKET/PREFIX/; stopped afterwards."""
    with moto_s3() as (url, client):
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(p for p in real_photos.rglob("*") if p.is_file()):
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{path.relative_to(real_photos).as_posix()}", Body=path.read_bytes())
        client.put_object(Bucket=BUCKET, Key="elsewhere/not-in-prefix.jpg", Body=b"x")
        yield url, client


def s3_env(tmp: Path) -> dict[str, str]:
    return aws_free_env(tmp, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")


@pytest.fixture(scope="module")
def local_csv(real_photos, tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "labels.csv"
    catdog("predict-folder", real_photos, "--model", tiny_bundle, "--out", out, "--batch-size", "8")
    return out


def test_an_s3_prefix_gives_the_rows_of_the_same_local_folder(s3, tiny_bundle, local_csv, tmp_path):
    url, _ = s3
    out = tmp_path / "labels.csv"
    result = catdog(
        "predict-folder", f"s3://{BUCKET}/{PREFIX}", "--model", tiny_bundle, "--out", out, "--batch-size", "8",
        "--s3-endpoint-url", url, env=s3_env(tmp_path),
    )
    assert out.read_bytes() == local_csv.read_bytes(), "keys relative to the prefix, same labels and errors"
    assert "labeled 46 files" in result.stderr


def test_an_s3_prefix_on_the_ray_engine_gives_the_same_rows(s3, tiny_bundle, local_csv, tmp_path):
    pytest.importorskip("ray")
    url, _ = s3
    out = tmp_path / "labels.csv"
    env = {**s3_env(tmp_path), "AWS_ENDPOINT_URL_S3": url, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    # No --ray-address: the driver starts (and stops) a one-machine cluster of its own, bound to loopback.
    catdog(
        "predict-folder", f"s3://{BUCKET}/{PREFIX}/", "--model", tiny_bundle, "--out", out, "--batch-size", "8",
        "--engine", "ray", env=env, timeout=300,
    )
    assert out.read_bytes() == local_csv.read_bytes()


def test_a_missing_bucket_is_a_one_line_error(s3, tiny_bundle, tmp_path):
    url, _ = s3
    result = catdog(
        "predict-folder", "s3://no-such-bucket/x", "--model", tiny_bundle, "--out", tmp_path / "l.csv",
        "--s3-endpoint-url", url, env=s3_env(tmp_path), check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: cannot list s3://no-such-bucket/x/: no such bucket", result.stderr


def test_an_unreachable_endpoint_is_a_one_line_error(tiny_bundle, tmp_path):
    import socket

    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = catdog(
        "predict-folder", f"s3://{BUCKET}/x", "--model", tiny_bundle, "--out", tmp_path / "l.csv",
        "--s3-endpoint-url", f"http://127.0.0.1:{port}", env=s3_env(tmp_path), check=False, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot list s3://{BUCKET}/x/: "), result.stderr


def test_an_object_that_vanishes_mid_run_is_an_error_row(s3, monkeypatch, tmp_path):
    """Listed, then deleted before it is read: its row says why, and the run goes on."""
    from catdog.labeling.engines import decode
    from catdog.labeling.sources import open_source

    url, client = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    client.put_object(Bucket=BUCKET, Key="vanishing/a.jpg", Body=b"soon gone")
    source = open_source(f"s3://{BUCKET}/vanishing", url)
    assert source.list().paths == ["a.jpg"]
    client.delete_object(Bucket=BUCKET, Key="vanishing/a.jpg")
    assert decode(source, "a.jpg", None, 32, 10_000) == "file not found"


def test_odd_keys_are_read_exactly_and_a_key_ending_in_a_slash_is_an_error_row(s3, tmp_path, monkeypatch):
    from catdog.labeling.sources import open_source

    url, client = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    client.put_object(Bucket=BUCKET, Key="odd/q?versionId=1.jpg", Body=b"question")
    client.put_object(Bucket=BUCKET, Key="odd/#hash.jpg", Body=b"hash")
    client.put_object(Bucket=BUCKET, Key="odd/dir/", Body=b"content under a folder-like key")
    client.put_object(Bucket=BUCKET, Key="odd/marker/", Body=b"")
    source = open_source(f"s3://{BUCKET}/odd", url)
    listing = source.list()
    assert listing.paths == ["#hash.jpg", "dir/", "q?versionId=1.jpg"]
    assert listing.problems == {"dir/": "object key ends with '/' (not a file name)"}
    assert source.read_bytes("q?versionId=1.jpg") == b"question" and source.read_bytes("#hash.jpg") == b"hash"


def test_a_store_that_fails_mid_run_stops_the_run_instead_of_filling_it_with_error_rows(tmp_path, monkeypatch):
    import socket

    from catdog.errors import CatdogError
    from catdog.labeling.sources import open_source

    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(CatdogError, match=rf"^cannot read s3://{BUCKET}/x/a.jpg: .*rerun with --resume$"):
        open_source(f"s3://{BUCKET}/x", f"http://127.0.0.1:{port}").read_bytes("a.jpg")
