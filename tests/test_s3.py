"""S3 prefixes as labeling sources, against a moto S3 server on 127.0.0.1: the same rows as the local folder, for
both engines; a missing bucket is a one-line error; an object that vanishes mid-run is an error row."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from conftest import InProcessSpread, aws_free_env, catdog, moto_s3

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

    from catdog.labeling.sources import StoreError, open_source

    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A StoreError (a CatdogError) stops the command; predict-folder adds "fix it and rerun with --resume" (see
    # the revoked-credentials test), report its own next step, so the source's text names no option.
    with pytest.raises(StoreError, match=rf"^cannot read s3://{BUCKET}/x/a.jpg: Could not connect to the endpoint") as caught:
        open_source(f"s3://{BUCKET}/x", f"http://127.0.0.1:{port}").read_bytes("a.jpg")
    assert "--resume" not in str(caught.value)


ALLOW_ALL = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}'


class Revoking:
    """A predictor that deletes the run's own access key (as an admin revoking it would) at its `at`-th batch."""

    def __init__(self, inner, at: int, revoke):
        self.inner, self.meta, self.at, self.revoke, self.calls = inner, inner.meta, at, revoke, 0

    def predict(self, images):
        self.calls += 1
        if self.calls == self.at:
            self.revoke()
        return self.inner.predict(images)


@pytest.fixture
def iam_s3(tmp_path, monkeypatch):
    """A moto server enforcing IAM: 16 photos under s3://BUCKET/revoked/ (and the same folder locally), a user
    allowed everything, two access keys of that user (as environment variables) and a function that deletes one."""
    import boto3
    import requests

    import catdog.labeling.sources as sources
    from conftest import make_image

    folder = tmp_path / "photos"
    for i in range(16):
        make_image(folder / f"{i:02d}.jpg", seed=i, color=(16 * i, 90, 200))
    with moto_s3() as (url, client):
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(folder.iterdir()):
            client.put_object(Bucket=BUCKET, Key=f"revoked/{path.name}", Body=path.read_bytes())
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
        labeler, admin_user = (f"{role}-{uuid.uuid4().hex[:8]}" for role in ("labeler", "admin"))  # IAM is process-wide in moto
        for user in (labeler, admin_user):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=ALLOW_ALL)

        def new_key(user: str = labeler) -> dict[str, str]:
            key = iam.create_access_key(UserName=user)["AccessKey"]
            return {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}

        keys = [new_key(), new_key()]
        admin = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **{k.lower(): v for k, v in new_key(admin_user).items()})
        requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10)  # from now on every request is checked
        monkeypatch.setattr(sources, "_FILESYSTEMS", {})  # no filesystem holding another test's credentials
        try:
            yield url, folder, keys, lambda key: admin.delete_access_key(UserName=labeler, AccessKeyId=key["AWS_ACCESS_KEY_ID"])
        finally:
            requests.post(f"{url}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_credentials_revoked_mid_run_stop_it_with_progress_kept_and_resume_finishes_it(iam_s3, tiny_bundle, tmp_path, monkeypatch):
    """Not a 'complete' CSV of 'permission denied' rows: the store refused the key, not the objects."""
    from catdog.errors import CatdogError
    from catdog.labeling.labels import progress_path
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor

    url, folder, (first, second), revoke = iam_s3
    for key, value in {**aws_free_env(tmp_path), **first}.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "labels.csv"
    options = PredictOptions(f"s3://{BUCKET}/revoked", tiny_bundle, out, batch_size=2, workers=1, s3_endpoint_url=url)
    with pytest.raises(CatdogError, match=r"^cannot read s3://.*: the access key is not valid .*\(InvalidAccessKeyId\); fix it and rerun with --resume$"):
        predict(options, Revoking(load_predictor(tiny_bundle), 2, lambda: revoke(first)))
    assert not out.exists() and progress_path(out).exists()
    result = catdog(
        "predict-folder", f"s3://{BUCKET}/revoked", "--model", tiny_bundle, "--out", out, "--batch-size", "2", "--resume",
        "--s3-endpoint-url", url, env=aws_free_env(tmp_path, **second),
    )
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", tmp_path / "local.csv", "--batch-size", "2")
    assert out.read_bytes() == (tmp_path / "local.csv").read_bytes() and "16 ok, 0 error" in result.stderr


def test_a_bad_key_at_the_start_is_one_error_line_naming_the_code(iam_s3, tiny_bundle, tmp_path):
    url, _, _, _ = iam_s3
    result = catdog(
        "predict-folder", f"s3://{BUCKET}/revoked", "--model", tiny_bundle, "--out", tmp_path / "l.csv", "--s3-endpoint-url", url,
        env=aws_free_env(tmp_path, AWS_ACCESS_KEY_ID="AKIANOSUCHKEY0000000", AWS_SECRET_ACCESS_KEY="x"), check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot list s3://{BUCKET}/revoked/: the access key is not valid (deleted, revoked or mistyped) (InvalidAccessKeyId)"
    ), result.stderr


def test_a_report_whose_store_refuses_the_key_stops_without_pointing_at_resume(iam_s3, tiny_bundle, tmp_path):
    """The store failure reads the same in every command, and each says its own next step: report has no --resume."""
    url, folder, _, _ = iam_s3
    catdog("predict-folder", folder, "--model", tiny_bundle, "--out", tmp_path / "labels.csv")
    result = catdog(
        "report", tmp_path / "labels.csv", "--images", f"s3://{BUCKET}/revoked", "--out", tmp_path / "r.html",
        "--s3-endpoint-url", url, env=aws_free_env(tmp_path, AWS_ACCESS_KEY_ID="AKIANOSUCHKEY0000000", AWS_SECRET_ACCESS_KEY="x"),
        check=False,
    )
    assert result.returncode == 1 and not (tmp_path / "r.html").exists()
    assert result.stderr.startswith(f"error: cannot read s3://{BUCKET}/revoked/") and "(InvalidAccessKeyId)" in result.stderr
    assert "--resume" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_archived_object_says_so_and_a_missing_one_is_still_a_row(s3, tmp_path, monkeypatch):
    from catdog.labeling.engines import decode
    from catdog.labeling.sources import open_source

    url, client = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    client.put_object(Bucket=BUCKET, Key="cold/a.jpg", Body=b"frozen", StorageClass="GLACIER")
    source = open_source(f"s3://{BUCKET}/cold", url)
    assert decode(source, "a.jpg", None, 32, 10_000) == "archived (GLACIER): restore it first"
    assert decode(source, "gone.jpg", None, 32, 10_000) == "file not found"


def test_an_object_that_grows_past_the_limit_after_listing_is_an_error_row(s3, tmp_path, monkeypatch):
    import catdog.labeling.sources as sources
    from catdog.labeling.engines import decode

    url, client = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sources, "MAX_OBJECT_BYTES", 1000)  # the 128 MiB limit, scaled down
    client.put_object(Bucket=BUCKET, Key="growing/a.jpg", Body=b"x" * 10)
    source = sources.open_source(f"s3://{BUCKET}/growing", url)
    assert source.list().problems == {}
    client.put_object(Bucket=BUCKET, Key="growing/a.jpg", Body=b"x" * 5000)
    assert decode(source, "a.jpg", None, 32, 10_000) == "object too large: 5,000 bytes (objects are read whole; the limit is 1,000)"


def test_resume_refuses_the_same_bucket_on_another_endpoint(s3, tiny_bundle, tmp_path, monkeypatch):
    """Two stores with the same bucket and keys are two sources: a run's rows never mix them."""
    from catdog.errors import CatdogError
    from catdog.labeling.predict import PredictOptions, predict
    from catdog.labeling.runtime import load_predictor
    from catdog.labeling.sources import describe_endpoint
    from test_predict import Interrupting

    url, client = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "labels.csv"
    source = f"s3://{BUCKET}/{PREFIX}"
    with moto_s3() as (other_url, other):
        other.create_bucket(Bucket=BUCKET)
        for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]:
            other.put_object(Bucket=BUCKET, Key=obj["Key"], Body=client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
        with pytest.raises(KeyboardInterrupt):
            predict(PredictOptions(source, tiny_bundle, out, batch_size=4, workers=1, s3_endpoint_url=url), Interrupting(load_predictor(tiny_bundle), 3))
        with pytest.raises(CatdogError, match="different run"):
            predict(PredictOptions(source, tiny_bundle, out, batch_size=4, workers=1, s3_endpoint_url=other_url, resume=True))
    assert describe_endpoint("HTTP://user:secret@Minio.Example:9000/base/?X-Amz-Signature=abc") == "http://minio.example:9000/base"


@pytest.mark.parametrize("endpoint", ["http://[::1", "http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_an_endpoint_that_is_no_url_is_one_error_line(tiny_bundle, tmp_path, endpoint):
    result = catdog("predict-folder", f"s3://{BUCKET}/x", "--model", tiny_bundle, "--out", tmp_path / "l.csv",
                    "--s3-endpoint-url", endpoint, env=s3_env(tmp_path), check=False, timeout=120)
    assert result.returncode == 1 and result.stderr.startswith(f"error: invalid S3 endpoint '{endpoint}': "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_message_redacted_twice_reads_as_redacted_once():
    """A CatdogError's text is redacted where it is made and again by the CLI: the second pass appended another
    "..." (`s3://b/p?......`), and a closing backtick was taken for part of the URL and lost."""
    from catdog.errors import redact

    text = ("cannot list s3://b/p?X-Amz-Signature=SECRET: Custom endpoint `http://127.0.0.1:9/?X-Amz-Signature=SECRET` "
            "was not a valid URI; see https://user:pw@example.com/a.")
    once = redact(text)
    assert once == ("cannot list s3://b/p?...: Custom endpoint `http://127.0.0.1:9/?...` was not a valid URI; "
                    "see https://example.com/a.")
    assert redact(once) == once


def test_credentials_in_the_endpoint_are_refused_and_query_strings_never_echoed(tiny_bundle, tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = catdog(
        "predict-folder", f"s3://{BUCKET}/x", "--model", tiny_bundle, "--out", tmp_path / "l.csv",
        "--s3-endpoint-url", f"http://alice:hunter2@127.0.0.1:{port}", env=s3_env(tmp_path), check=False,
    )
    assert result.returncode == 1 and "hunter2" not in result.stderr and "alice" not in result.stderr
    assert result.stderr.strip() == (
        f"error: the S3 endpoint http://127.0.0.1:{port} holds credentials (user:password@): give the bare URL, "
        "and the credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
    )
    for source, endpoint in ((f"s3://{BUCKET}/x?X-Amz-Signature=SECRET", f"http://127.0.0.1:{port}"),
                             (f"s3://{BUCKET}/x", f"http://127.0.0.1:{port}/?X-Amz-Signature=SECRET")):
        result = catdog("predict-folder", source, "--model", tiny_bundle, "--out", tmp_path / "l.csv",
                        "--s3-endpoint-url", endpoint, env=s3_env(tmp_path), check=False, timeout=120)
        assert result.returncode == 1 and result.stderr.startswith("error: ") and "SECRET" not in result.stderr, result.stderr


@pytest.fixture
def tree(s3, tmp_path, monkeypatch):
    """s3://BUCKET/tree: keys at the top, 1,200 in one folder (two pages), deep, under "//", markers, odd characters;
    and the sorted path texts a listing of it must give."""
    from moto.backends import get_backend

    from catdog.labeling import sources

    url, _ = s3
    for key, value in s3_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    backend = get_backend("s3")["123456789012"]["global"]
    keys = {f"tree/top-{i}.jpg": b"x" for i in range(5)}
    keys |= {f"tree/a/{i:04d}.jpg": b"x" for i in range(1200)}
    keys |= {f"tree/s{j:02d}/{k}.jpg": b"x" * (j + 1) for j in range(40) for k in range(3)}
    keys |= {"tree/b/c/d/deep.jpg": b"x", "tree/b//x.jpg": b"x", "tree/e/": b"", "tree/f/": b"content", "tree/g/ü é.jpg": b"x",
             "tree/h\\x.jpg": b"x", "tree/h/i.jpg": b"x", "tree-other/x.jpg": b"x", "tree/a.jpg": b"x"}
    for key, body in keys.items():  # straight into the in-process server's store: fast
        backend.put_object(BUCKET, key, body)
    expected = sorted(sources.path_text(k[5:]) for k, body in keys.items() if k.startswith("tree/") and (body or not k.endswith("/")))
    assert len(expected) == 1200 + 120 + 5 + 7
    return sources.open_source(f"s3://{BUCKET}/tree", url), expected


@pytest.mark.parametrize("concurrency", [1, 4, 1000])
def test_a_prefix_listed_by_its_sub_prefixes_concurrently_gives_every_key_once_sorted(tree, monkeypatch, concurrency):
    """The listing is the same sorted text whatever the concurrency (1: one listing, as before; 4: sub-prefixes
    of the first level; 1000: two levels looked for), and never more requests in flight than allowed."""
    from catdog.labeling import sources

    source, expected = tree
    fs = source._fs()
    call, in_flight, most = fs._call_s3, [0], [0]

    async def counted(*args, **kwargs):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            return await call(*args, **kwargs)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(fs, "_call_s3", counted)
    monkeypatch.setattr(sources, "LIST_CONCURRENCY", concurrency)
    listing = source.list()
    assert listing.paths == expected
    assert listing.problems == {"f/": "object key ends with '/' (not a file name)"}
    assert 1 <= most[0] <= concurrency and (concurrency == 1 or most[0] > 1)


@pytest.mark.parametrize("width", [1, 3, 8, 100])
def test_a_prefix_listed_in_parts_elsewhere_gives_the_listing_of_one_process(tree, monkeypatch, width):
    """The Ray engine lists an S3 prefix's sub-prefixes on the cluster (parsing ten million keys is one process's
    bound): the driver finds the sub-prefixes, `width` parts list them, and the joined listing (paths, problems,
    sizes and ETag stamps) is the one a single process makes."""
    from catdog.labeling import sources

    source, expected = tree
    whole = source.list()
    monkeypatch.setattr(sources, "SPREAD_PARTS", 40)
    spread = InProcessSpread(width)
    listing = source.list(spread=spread)
    assert listing.paths == expected == whole.paths
    assert listing.problems == whole.problems
    assert listing.sizes == whole.sizes and listing.stamps == whole.stamps
    (calls,) = spread.calls
    listed = [prefix for _, part, _ in calls for prefix in part]
    assert len(calls) == min(width, sources.SPREAD_PARTS)
    assert all(in_flight * len(calls) <= sources.SPREAD_IN_FLIGHT for *_, in_flight in calls), "the store's share"
    assert listed == sorted(listed) and len(listed) == len(set(listed)), "each sub-prefix listed once, in order"
    assert listed == ["tree/"] if width == 1 else len(listed) >= min(width, 40)
    assert source.list(recursive=False, spread=spread).paths == [p for p in expected if "/" not in p]


def test_a_large_object_is_read_whole_however_its_body_arrives(tmp_path, monkeypatch):
    """An object's body comes over the socket in pieces: the source reads until its end, not one piece."""
    from catdog.labeling.sources import S3Source

    data = uuid.uuid4().bytes * (3 * 2**20 // 16)  # 3 MiB: many socket reads
    with moto_s3() as (url, client):
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/big.bin", Body=data)
        for key, value in s3_env(tmp_path).items():
            monkeypatch.setenv(key, value)
        assert S3Source.parse(f"s3://{BUCKET}/{PREFIX}", url).read_bytes("big.bin") == data
