"""Shared test helpers: tiny synthetic images, a tiny trained model bundle, throwaway project copies, and
the real-data inputs (3,000 photos, MobileNetV2 weights): where to find them, and skipping without them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATASET_ZIP = SHARED / "datasets" / "cats_and_dogs_3k.zip"
DATASET_SHA256 = "51ba76fad1f9e62d6b1fdbf6be8412a0d510f5eba6ddec3f44e69a104b9f3cab"  # of SHARED_DATASET_ZIP
WEIGHTS_035_NAME = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
SHARED_WEIGHTS_035 = SHARED / "weights" / WEIGHTS_035_NAME
WEIGHTS_035_SHA256 = "df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f"
PUBLIC_WEIGHTS_035_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{WEIGHTS_035_NAME}"
PUBLIC_DATASET_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
# No sha256 of the public zip is published (nor reachable from here to compute): its size is pinned, and the
# sha256 that fetch records on the first download is checked on every reuse.
PUBLIC_DATASET_SIZE = 68_606_236
DATASET_LAYOUT = {"train/cats": 1000, "train/dogs": 1000, "validation/cats": 500, "validation/dogs": 500}
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
PROJECT_FILES = (
    "catdog", "dvc.yaml", "params.yaml", "pyproject.toml", "requirements.lock", ".dvc/config", ".dvcignore", ".gitignore",
)


def missing_input(reason: str) -> NoReturn:
    """A test without its real input is skipped with `reason`; with CI=true it fails instead (CI runs them all)."""
    if CI:
        pytest.fail(f"{reason} [CI=true: real-data and Docker tests must run]", pytrace=False)
    pytest.skip(reason)


def download_cache() -> Path:
    """Where the one-time downloads of the public dataset and weights are kept between test runs."""
    if os.environ.get("CATDOG_TEST_CACHE"):
        return Path(os.environ["CATDOG_TEST_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catdog-tests"


def download_once(url: str, sha256: str | None):
    """`url` into download_cache() through catdog's own fetch code (verified, then reused); the Fetched
    record, or the one-line reason it could not be fetched. Short timeouts: an offline machine skips fast."""
    from catdog.errors import CatdogError
    from catdog.training.fetch import download
    from catdog.training.params import Source

    try:
        return download(Source(url=url, sha256=sha256), download_cache(), timeout_s=10.0, retries=1, backoff_s=1.0)
    except (CatdogError, OSError) as exc:
        return f"download failed: {' '.join(str(exc).split())}"


@dataclass(frozen=True)
class RealDataset:
    """A zip laid out like cats_and_dogs_filtered.zip: <top>/train and <top>/validation, cats/ and dogs/ in each."""

    zip: Path
    sha256: str
    top: str


def _checked_dataset(zip_path: Path, sha256: str | None, origin: str) -> RealDataset:
    from catdog.training.fetch import sha256_of

    try:
        with zipfile.ZipFile(zip_path) as zf:
            jpgs = [n.split("/") for n in zf.namelist() if n.lower().endswith(".jpg")]
    except (OSError, zipfile.BadZipFile) as exc:
        pytest.fail(f"{origin}: not a readable zip ({exc})", pytrace=False)
    tops = {parts[0] for parts in jpgs}
    counts = dict(Counter("/".join(parts[1:3]) for parts in jpgs if len(parts) == 4))
    if len(tops) != 1 or counts != DATASET_LAYOUT:
        pytest.fail(f"{origin}: expected one top folder holding {DATASET_LAYOUT} .jpg files, found {counts} under {sorted(tops)}", pytrace=False)
    return RealDataset(zip_path, sha256 or sha256_of(zip_path), tops.pop())


def _zip_folder(folder: Path, dest: Path, origin: str) -> Path:
    """A folder laid out like cats_and_dogs_filtered (train/ in it, or in its one subfolder), as a stored zip."""
    candidates = [folder] if (folder / "train").is_dir() else [d for d in folder.iterdir() if (d / "train").is_dir()]
    if len(candidates) != 1:
        pytest.fail(f"{origin}: no train/ and validation/ folders in it (or in one folder inside it)", pytrace=False)
    root = candidates[0]
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
    return dest


@pytest.fixture(scope="session")
def real_dataset(tmp_path_factory) -> RealDataset:
    """The 3,000 real photos: CATDOG_TEST_DATA (a zip or folder), else ../shared, else a one-time download."""
    given = os.environ.get("CATDOG_TEST_DATA")
    if given:
        origin, path = f"CATDOG_TEST_DATA={given}", Path(given).expanduser()
        if path.is_dir():
            return _checked_dataset(_zip_folder(path, tmp_path_factory.mktemp("test_data") / f"{path.name}.zip", origin), None, origin)
        if not path.is_file():
            pytest.fail(f"{origin}: no such file or folder", pytrace=False)
        return _checked_dataset(path, None, origin)
    if SHARED_DATASET_ZIP.is_file():
        return _checked_dataset(SHARED_DATASET_ZIP, DATASET_SHA256, str(SHARED_DATASET_ZIP))
    got = download_once(PUBLIC_DATASET_URL, None)
    if isinstance(got, str):
        missing_input(
            "no real photos: set CATDOG_TEST_DATA to cats_and_dogs_filtered.zip (or a folder laid out like it), "
            f"or put ../shared/datasets/cats_and_dogs_3k.zip beside the repo ({PUBLIC_DATASET_URL} {got})"
        )
    if got.size != PUBLIC_DATASET_SIZE:
        got.path.unlink()
        pytest.fail(f"{PUBLIC_DATASET_URL}: downloaded {got.size:,} bytes, expected {PUBLIC_DATASET_SIZE:,} (removed)", pytrace=False)
    return _checked_dataset(got.path, got.sha256, PUBLIC_DATASET_URL)


@pytest.fixture(scope="session")
def real_weights() -> Path:
    """ImageNet MobileNetV2 alpha 0.35 weights: CATDOG_TEST_WEIGHTS, else ../shared, else a one-time download."""
    from catdog.training.fetch import sha256_of

    given = os.environ.get("CATDOG_TEST_WEIGHTS")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            pytest.fail(f"CATDOG_TEST_WEIGHTS={given}: no such file", pytrace=False)
        if (actual := sha256_of(path)) != WEIGHTS_035_SHA256:
            pytest.fail(f"CATDOG_TEST_WEIGHTS={given}: sha256 {actual}, expected {WEIGHTS_035_SHA256} ({WEIGHTS_035_NAME})", pytrace=False)
        return path
    if SHARED_WEIGHTS_035.is_file():
        return SHARED_WEIGHTS_035
    got = download_once(PUBLIC_WEIGHTS_035_URL, WEIGHTS_035_SHA256)
    if isinstance(got, str):
        missing_input(
            f"no MobileNetV2 weights: set CATDOG_TEST_WEIGHTS to {WEIGHTS_035_NAME}, "
            f"or put ../shared/weights/ beside the repo ({PUBLIC_WEIGHTS_035_URL} {got})"
        )
    return got.path


# What TensorFlow, absl, CUDA, oneDNN and LiteRT print by themselves ("I0000 00:00:... cudart_stub.cc:31] ...",
# "WARNING: All log messages before absl::InitializeLog() ...", "INFO: Created TensorFlow Lite XNNPACK ...").
LIBRARY_LOG = re.compile(r"^[IWEF]\d{4} \d|absl|cuda|cuInit|oneDNN|XNNPACK|TensorFlow Lite|cpu_feature_guard", re.IGNORECASE)


def library_log_lines(output: str) -> list[str]:
    """The lines of a command's output that are the libraries' own log lines (none, unless --verbose)."""
    return [line for line in output.splitlines() if LIBRARY_LOG.search(line)]


def cli_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's `catdog` and `dvc` first on PATH, and no log-level
    variables, so commands print what a user sees (catdog quiets the libraries itself)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name in ("TF_CPP_MIN_LOG_LEVEL", "CATDOG_LOG_LEVEL"):
        env.pop(name, None)
    env.setdefault("GIT_AUTHOR_NAME", "catdog-tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@catdog.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "catdog-tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@catdog.invalid")
    return env


def run(args: list[str], cwd: Path | None = None, check: bool = True, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure show it."""
    result = subprocess.run(args, cwd=cwd, env=kwargs.pop("env", cli_env()), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def catdog(*args: str, cwd: Path | None = None, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "catdog", *map(str, args)], cwd=cwd, check=check, **kwargs)


def make_image(path: Path, color=(200, 60, 40), size=(48, 36), fmt: str | None = None, mode: str = "RGB", seed: int = 0) -> Path:
    """A small noisy image of one dominant colour, saved in `fmt` (default: from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color, dtype=np.int16) + rng.integers(-30, 31, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def synthetic_dataset(root: Path, n_train: int = 24, n_val: int = 8, top: str = "pets") -> Path:
    """A cats_and_dogs_filtered-like tree: reddish 'cats', bluish 'dogs' (learnable in one epoch)."""
    for split, n in (("train", n_train), ("validation", n_val)):
        for cls, color in (("cats", (190, 70, 50)), ("dogs", (50, 80, 190))):
            for i in range(n):
                make_image(root / top / split / cls / f"{cls[:-1]}.{split}.{i}.jpg", color, seed=hash((split, cls, i)) % 2**32)
    return root


def make_zip(src: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())
    return dest


def write_params(project: Path, overrides: dict) -> None:
    """Deep-merge `overrides` into `project`/params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(params, overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(dest: Path, overrides: dict) -> Path:
    """A committed git + DVC copy of this repo's pipeline with params overridden."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    write_params(dest, overrides)
    run(["git", "init", "-q", "-b", "main"], cwd=dest)
    run(["git", "add", "-A"], cwd=dest)
    run(["git", "commit", "-qm", "project"], cwd=dest)
    return dest


def tiny_overrides(dataset: Path, weights: Path | None = None, weights_sha256: str | None = None) -> dict:
    """Params for a pipeline that runs in well under a minute. small_cnn never reads backbone weights, so
    without `weights` the fetch stage copies a small stand-in file written beside `dataset`."""
    if weights is None:
        weights = dataset.parent / "stand-in-weights.h5"
        if not weights.exists():
            weights.write_bytes(b"small_cnn reads no backbone weights\n")
    return {
        "base": {"image_size": 32},
        "fetch": {"dataset": {"url": str(dataset), "sha256": None}, "weights": {"url": str(weights), "sha256": weights_sha256}},
        "train": {"model": "small_cnn", "epochs": 1, "fine_tune_epochs": 0, "batch_size": 16, "augment": True, "threshold": "accuracy"},
        "evaluate": {"n_wrong": 4},
    }


@pytest.fixture(scope="session")
def tiny_dataset_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_dataset")
    synthetic_dataset(root / "tree")
    return make_zip(root / "tree", root / "pets.zip")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A trained small_cnn bundle at 32 px (model.keras, model.tflite, meta.json), trained in a subprocess;
    what `catdog train` printed is kept beside it in train-output.txt."""
    root = tmp_path_factory.mktemp("tiny_bundle")
    synthetic_dataset(root / "images", n_train=16, n_val=6)
    (root / "train.csv").write_text(
        "path,label\n" + "".join(f"pets/train/{c}s/{c}.train.{i}.jpg,{c}\n" for c in ("cat", "dog") for i in range(16))
    )
    (root / "val.csv").write_text(
        "path,label\n" + "".join(f"pets/validation/{c}s/{c}.validation.{i}.jpg,{c}\n" for c in ("cat", "dog") for i in range(6))
    )
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    write_params(root, tiny_overrides(root / "unused.zip"))
    trained = catdog(
        "train", "--params", root / "params.yaml", "--train", root / "train.csv", "--val", root / "val.csv",
        "--images", root / "images", "--model-dir", root / "models", "--live-dir", root / "dvclive", cwd=root,
    )
    (root / "train-output.txt").write_text(trained.stdout + trained.stderr)
    return root / "models"


def real_photos_folder(dataset: RealDataset, dest: Path, per_class: int = 20) -> Path:
    """`per_class` real cat and dog photos from `dataset` (under train/cats, train/dogs), one synthetic PNG
    and five broken files (empty, text, HTML named .png, truncated JPEG, PostScript named .jpg)."""
    with zipfile.ZipFile(dataset.zip) as zf:
        names = sorted(n for n in zf.namelist() if n.lower().endswith(".jpg") and n.startswith(f"{dataset.top}/train/"))
        for cls in ("cats", "dogs"):
            for name in [n for n in names if n.startswith(f"{dataset.top}/train/{cls}/")][:per_class]:
                target = dest / "train" / cls / name.rsplit("/", 1)[1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
    make_image(dest / "synthetic" / "red.png", (200, 60, 40), size=(40, 30))
    broken = dest / "broken"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "empty.jpg").write_bytes(b"")
    (broken / "notes.txt").write_text("not an image\n")
    (broken / "not-an-image.png").write_text("<html>404</html>\n")
    first = sorted((dest / "train" / "cats").iterdir())[0]
    (broken / "truncated.jpg").write_bytes(first.read_bytes()[:400])
    (broken / "holiday.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    return dest


@pytest.fixture(scope="session")
def real_photos(real_dataset, tmp_path_factory) -> Path:
    """A session-wide folder of 40 real photos plus broken files (see real_photos_folder); do not modify it."""
    return real_photos_folder(real_dataset, tmp_path_factory.mktemp("real_photos") / "photos")


@contextmanager
def moto_s3(access_key: str = "k", secret_key: str = "s") -> Iterator[tuple[str, object]]:
    """A moto S3 server on a free 127.0.0.1 port: yields its endpoint URL and a boto3 client; stopped afterwards."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        yield url, boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=access_key, aws_secret_access_key=secret_key)
    finally:
        server.stop()


def aws_free_env(tmp: Path, **credentials: str) -> dict[str, str]:
    """cli_env() with every ambient AWS credential and config source removed (plus `credentials`, e.g.
    AWS_ACCESS_KEY_ID=...), and nothing (instance metadata, proxies) tried beyond 127.0.0.1."""
    env = {key: value for key, value in cli_env().items() if not key.startswith("AWS_") or key == "AWS_CA_BUNDLE"}
    env.update(
        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"), AWS_DEFAULT_REGION="us-east-1",
        NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **credentials,
    )
    return env


class InProcessSpread:
    """A `sources.Spread` in this process: each call's result goes through pickle, as from another process; the
    calls are kept in `calls`."""

    def __init__(self, width: int):
        self.width, self.calls = width, []

    def __call__(self, fn, calls):
        import pickle

        self.calls.append(calls)
        return [pickle.loads(pickle.dumps(fn(*args))) for args in calls]
