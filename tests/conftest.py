"""Shared test helpers: tiny synthetic images, a tiny trained model bundle, and throwaway project copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATASET_ZIP = SHARED / "datasets" / "cats_and_dogs_3k.zip"
DATASET_SHA256 = "51ba76fad1f9e62d6b1fdbf6be8412a0d510f5eba6ddec3f44e69a104b9f3cab"
WEIGHTS_035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
WEIGHTS_035_SHA256 = "df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f"
PROJECT_FILES = ("catdog", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc/config", ".dvcignore", ".gitignore")


def require_shared(path: Path) -> Path:
    """Real-data tests fail loudly (never skip) when ../shared is missing."""
    if not path.exists():
        pytest.fail(f"missing {path}: the real-data tests need the shared folder beside the repo (see README)")
    return path


def cli_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's `catdog` and `dvc` first on PATH, quiet TensorFlow."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
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


def tiny_overrides(dataset: Path, weights: Path = WEIGHTS_035, weights_sha256: str | None = WEIGHTS_035_SHA256) -> dict:
    """Params for a pipeline that runs in well under a minute."""
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
    """A trained small_cnn bundle at 32 px (model.keras, model.tflite, meta.json), trained in a subprocess."""
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
    catdog(
        "train", "--params", root / "params.yaml", "--train", root / "train.csv", "--val", root / "val.csv",
        "--images", root / "images", "--model-dir", root / "models", "--live-dir", root / "dvclive", cwd=root,
    )
    return root / "models"
