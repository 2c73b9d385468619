"""The Docker image, built and run for real (issue 7).

The tests use the Docker engine running on this machine (`docker info`); where ../shared/docker exists,
its engine.sh starts one (stopped again when the tests end) and its base-image.sh builds the
`python:3.11-slim` base (no registry there), elsewhere the base is pulled. Without an engine they skip, saying so (with CI=true they fail). The image
is built from a throwaway copy of the build files with the tiny trained bundle under models/, once with
the model mounted at run time and once baked in, then run on a folder of real photos (from the real
dataset zip, see conftest.real_dataset) and broken files.
Its CSV must equal the host CLI's (`--runtime litert`) on the same folder.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    SHARED,
    catdog,
    cli_env,
    make_image,
    missing_input,
    run,
)

pytestmark = pytest.mark.docker

DOCKER_DIR = SHARED / "docker"
IMAGE = f"catdog-test-{uuid.uuid4().hex[:8]}"  # per session: test runs sharing an engine never swap images
MAX_IMAGE_BYTES = 400 * 1000**2  # `docker image ls` megabytes
REAL_PHOTOS = [f"train/{c}s/{c}.{i}.jpg" for c in ("cat", "dog") for i in range(4)]
BROKEN = ["broken/empty.jpg", "broken/notes.txt", "broken/not-an-image.png", "broken/truncated.jpg"]
BUILD_FILES = ("Dockerfile", ".dockerignore", "pyproject.toml")


def docker(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return run(["docker", *map(str, args)], check=check, timeout=timeout, **({"env": env} if env else {}))


def build(context: Path, tag: str, *build_args: str) -> subprocess.CompletedProcess:
    """`docker build` with the legacy builder (the only one here; forced elsewhere so its log can be read)."""
    args = [a for kv in build_args for a in ("--build-arg", kv)]
    return docker("build", "-t", tag, *args, context, timeout=1800, env={**cli_env(), "DOCKER_BUILDKIT": "0"})


def step_output(log: str, needle: str) -> str:
    """The legacy builder's output for the one step whose instruction contains `needle`."""
    steps = [s for s in re.split(r"^Step \d+/\d+ : ", log, flags=re.MULTILINE) if needle in s.splitlines()[0]]
    assert len(steps) == 1, f"expected one build step with {needle!r}:\n{log}"
    return steps[0]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def assert_same_labels(got: Path, want: Path, threshold: float) -> None:
    """Same files, statuses, errors and labels; p_dog within 1e-4 (the image may resolve other LiteRT /
    Pillow versions than the host; a label may differ only for a score that close to the threshold)."""
    rows, expected = read_rows(got), read_rows(want)
    assert [r["path"] for r in rows] == [r["path"] for r in expected]
    for row, exp in zip(rows, expected):
        assert (row["status"], row["error"]) == (exp["status"], exp["error"]), row
        if row["status"] == "ok":
            p, q = float(row["p_dog"]), float(exp["p_dog"])
            assert abs(p - q) <= 1e-4, (row, exp)
            assert row["label"] == exp["label"] or abs(q - threshold) <= 1e-4, (row, exp)


def assert_labels(path: Path) -> list[dict[str, str]]:
    """One row per file; every real photo labeled, every broken file an error with a reason."""
    rows = read_rows(path)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows) == len(REAL_PHOTOS) + len(BROKEN) + 1
    for rel in REAL_PHOTOS + ["synthetic/red.png"]:
        row = by_path[rel]
        assert row["status"] == "ok" and row["label"] in ("cat", "dog", "neither") and 0 <= float(row["p_dog"]) <= 1, row
        assert row["error"] == ""
    for rel in BROKEN:
        row = by_path[rel]
        assert row["status"] == "error" and row["label"] == "" and row["p_dog"] == "" and row["error"], row
    return rows


# ---------------------------------------------------------------------------------------------- fixtures


def base_image() -> str:
    """The image the Dockerfile builds FROM (its PYTHON_IMAGE default)."""
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return found.group(1) if found else "python:3.11-slim"


@pytest.fixture(scope="session")  # session scope: set up before (and, when it skips, instead of) tiny_bundle
def engine() -> Iterator[None]:
    """The running engine, or one started by ../shared/docker/engine.sh (and stopped by it after the tests); and
    the base image, from ../shared/docker/base-image.sh there, else pulled. Without either the tests skip (fail
    with CI=true)."""
    has_client = shutil.which("docker") is not None
    started = False
    if not (has_client and docker("info", check=False, timeout=60).returncode == 0):
        if (DOCKER_DIR / "engine.sh").is_file():
            run(["bash", str(DOCKER_DIR / "engine.sh"), "start"], cwd=REPO, timeout=900)
            started = True
        elif not has_client:
            missing_input("the Docker tests need Docker: install it and start its engine (`docker info` must work)")
        else:
            info = docker("info", check=False, timeout=60)
            if info.returncode != 0:
                why = (info.stderr.strip().splitlines() or ["no output"])[-1]
                missing_input(f"the Docker tests need a running Docker engine: `docker info` failed ({why})")
    try:
        base = base_image()
        if (DOCKER_DIR / "base-image.sh").is_file():
            run(["bash", str(DOCKER_DIR / "base-image.sh"), base], cwd=REPO, timeout=1800)
        elif docker("image", "inspect", base, check=False, timeout=60).returncode != 0:
            pulled = docker("pull", base, check=False, timeout=900)
            if pulled.returncode != 0:
                why = (pulled.stderr.strip().splitlines() or ["no output"])[-1]
                missing_input(f"the Docker tests need the base image {base}: `docker pull {base}` failed ({why})")
        yield
    finally:
        if started:  # the engine these tests started goes with them (by its pid file, not its name)
            run(["bash", str(DOCKER_DIR / "engine.sh"), "stop"], cwd=REPO, check=False, timeout=60)
            deadline = time.monotonic() + 60
            while docker("info", check=False, timeout=60).returncode == 0 and time.monotonic() < deadline:
                time.sleep(0.5)


def make_context(dest: Path, bundle: Path) -> Path:
    """The repo's build files, catdog/ and the tiny bundle under models/ (the real models/ is untouched)."""
    dest.mkdir(parents=True)
    for name in BUILD_FILES:
        shutil.copy2(REPO / name, dest / name)
    if (REPO / "requirements.lock").is_file():  # pinned versions, used as constraints by the Dockerfile
        shutil.copy2(REPO / "requirements.lock", dest / "requirements.lock")
    if (REPO / "README.md").is_file():
        shutil.copy2(REPO / "README.md", dest / "README.md")
    else:
        (dest / "README.md").write_text("# catdog\n")
    shutil.copytree(REPO / "catdog", dest / "catdog", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(bundle, dest / "models")
    return dest


JUNK = ("data/raw/big.bin", ".dvc/cache/files/md5/ab/big.bin", ".git/objects/big.bin", "tests/big.bin")


def context_bytes(root: Path) -> int:
    """Bytes of the files the build needs (what .dockerignore lets through should be about this)."""
    keep = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".keras"]
    return sum(p.stat().st_size for p in keep if not any(p.relative_to(root).as_posix() == j for j in JUNK))


@pytest.fixture(scope="module")
def context(engine, tiny_bundle, tmp_path_factory) -> Path:
    root = make_context(tmp_path_factory.mktemp("docker") / "context", tiny_bundle)
    # What .dockerignore must keep out of the context: data, the DVC cache, .git, tests.
    for junk in JUNK:
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_bytes(os.urandom(4 * 1024**2))
    return root


@pytest.fixture(scope="module")
def images(context) -> Iterator[dict[str, str]]:
    """Two builds: `mounted` (no model inside) and `baked` (MODEL_DIR=models); the second reuses the
    first's dependency layers."""
    tags = {"mounted": f"{IMAGE}:mounted", "baked": f"{IMAGE}:baked"}
    started = time.perf_counter()
    log = build(context, tags["mounted"]).stdout
    print(f"\nbuild {tags['mounted']}: {time.perf_counter() - started:.0f}s")
    sent = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", log)
    assert sent, log
    size = float(sent.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[sent.group(2)]
    assert size < context_bytes(context) + 1e6, f"{sent.group(0)}: .dockerignore lets data/.dvc/.git/tests/*.keras in"
    started = time.perf_counter()
    log = build(context, tags["baked"], "MODEL_DIR=models").stdout
    print(f"build {tags['baked']}: {time.perf_counter() - started:.0f}s")
    assert "Using cache" in step_output(log, "pip install -r /tmp/requirements.txt")
    yield tags
    docker("image", "rm", *tags.values(), check=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, real_dataset) -> Path:
    """A few real photos (train/cats, train/dogs), one synthetic PNG and four broken files."""
    root = tmp_path_factory.mktemp("photos_root") / "photos"
    with zipfile.ZipFile(real_dataset.zip) as zf:
        for rel in REAL_PHOTOS:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(f"{real_dataset.top}/{rel}"))
    make_image(root / "synthetic" / "red.png", (200, 60, 40), size=(40, 30))
    (root / "broken").mkdir()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "notes.txt").write_text("not an image\n")
    (root / "broken" / "not-an-image.png").write_text("<html>404</html>\n")
    (root / "broken" / "truncated.jpg").write_bytes((root / REAL_PHOTOS[0]).read_bytes()[:400])
    for path in [root, *root.rglob("*")]:  # readable by any container uid
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="module")
def host_csv(photos, tiny_bundle, tmp_path_factory) -> Path:
    """The host CLI's labels for the same folder, with the same runtime as the image (LiteRT)."""
    out = tmp_path_factory.mktemp("host") / "labels.csv"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--runtime", "litert")
    assert_labels(out)
    return out


@pytest.fixture(scope="module")
def mounted_model(tiny_bundle, tmp_path_factory) -> Path:
    """The bundle as a user would mount it, readable by the image's uid 1000 (`catdog train` writes the
    bundle folder 0700 and meta.json 0600, which only the owner, or `--user` of the owner, can read)."""
    dest = tmp_path_factory.mktemp("mounted_model") / "models"
    shutil.copytree(tiny_bundle, dest)
    for path in [dest, *dest.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


@pytest.fixture(scope="module")
def threshold(tiny_bundle) -> float:
    return float(json.loads((tiny_bundle / "meta.json").read_text())["threshold"])


def writable_dir(path: Path) -> Path:
    """A host folder any container uid may write to (the image's user is uid 1000, not the caller)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


# ------------------------------------------------------------------------------------------------- tests


def test_image_is_small_non_root_without_tensorflow(images):
    for tag in images.values():
        size = int(docker("image", "inspect", "-f", "{{.Size}}", tag).stdout)
        assert size <= MAX_IMAGE_BYTES, f"{tag} is {size / 1e6:.0f} MB (target <= 400 MB)"
        config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", tag).stdout)
        assert config["Entrypoint"] == ["catdog"]
        probe = docker(
            "run", "--rm", "--entrypoint", "python", tag, "-c",
            "import importlib.util as u, os; print(os.getuid(), u.find_spec('tensorflow') is None, u.find_spec('ai_edge_litert') is not None)",
        )
        assert probe.stdout.split() == ["1000", "True", "True"], probe.stdout
    env = docker("run", "--rm", "--entrypoint", "sh", images["baked"], "-c", 'echo "$CATDOG_MODEL"; ls /opt/catdog/model').stdout.split()
    assert env == ["/opt/catdog/model", "meta.json", "model.tflite"]


def test_mounted_model_labels_folder_in_place(images, photos, host_csv, threshold, mounted_model, tmp_path):
    """The README example: `-v "$PWD/photos:/data" IMAGE predict-folder /data --out /data/labels.csv`,
    with the model mounted read-only and chosen by --model."""
    work = tmp_path / "photos"
    shutil.copytree(photos, work)
    writable_dir(work)
    docker(
        "run", "--rm", "-v", f"{work}:/data", "-v", f"{mounted_model}:/model:ro",
        images["mounted"], "predict-folder", "/data", "--model", "/model", "--out", "/data/labels.csv",
    )
    assert_labels(work / "labels.csv")
    assert_same_labels(work / "labels.csv", host_csv, threshold)
    leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith(("labels.csv.", ".labels.csv")))
    assert leftovers == ["labels.csv.files", "labels.csv.job.json"], "no working files left, only what describes the CSV"


def test_baked_model_read_only_input_output_owned_by_caller(images, photos, host_csv, threshold, tmp_path):
    """Input mounted read-only, CSV written to a second mount as `--user uid:gid` (a non-root one)."""
    uid, gid = (os.getuid(), os.getgid()) if os.getuid() != 0 else (4242, 4243)
    out = writable_dir(tmp_path / "out")
    before = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*"))
    docker(
        "run", "--rm", "--user", f"{uid}:{gid}", "-v", f"{photos}:/data:ro", "-v", f"{out}:/out",
        images["baked"], "predict-folder", "/data", "--out", "/out/labels.csv",
    )
    csv_path = out / "labels.csv"
    assert (csv_path.stat().st_uid, csv_path.stat().st_gid) == (uid, gid)
    assert sorted(p.name for p in out.iterdir()) == ["labels.csv", "labels.csv.files", "labels.csv.job.json"]
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*")) == before
    assert_labels(csv_path)
    assert_same_labels(csv_path, host_csv, threshold)


def test_errors_are_the_clis_one_line_messages(images, photos, tiny_bundle, tmp_path):
    host = catdog("predict-folder", "/no/such/folder", "--model", tiny_bundle, "--out", tmp_path / "x.csv", check=False)
    assert host.returncode == 1 and "error: folder not found: /no/such/folder" in host.stderr
    cases = [
        ([images["baked"], "predict-folder", "/no/such/folder", "--out", "/tmp/x.csv"], "error: folder not found: /no/such/folder"),
        ([images["mounted"], "predict-folder", "/data", "--model", "/model", "--out", "/tmp/x.csv"], "error: model not found: /model"),
    ]
    for args, message in cases:
        assert_one_line_error(docker("run", "--rm", "-v", f"{photos}:/data:ro", *args, check=False), message)


def test_unwritable_output_is_a_one_line_error(images, photos):
    """`--out` inside the read-only input mount: a one-line `error:`, not a traceback."""
    result = docker("run", "--rm", "-v", f"{photos}:/data:ro", images["baked"], "predict-folder", "/data",
                    "--out", "/data/labels.csv", check=False)
    assert_one_line_error(result, "error: cannot write /data/labels.csv: Read-only file system")


def assert_one_line_error(result: subprocess.CompletedProcess, message: str | None) -> None:
    assert result.returncode == 1, (result.args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    if message:
        assert lines[0] == message


def test_code_change_rebuilds_from_cached_dependencies(images, context, tmp_path):
    """Editing catdog/ rebuilds in seconds: the dependency layer comes from the cache."""
    changed = tmp_path / "context"
    shutil.copytree(context, changed, ignore=shutil.ignore_patterns("data", ".dvc", ".git", "tests"))
    # A mark unique to this run: an edit repeated from an earlier run would hit that run's build cache.
    mark = uuid.uuid4().hex
    init = changed / "catdog" / "__init__.py"
    init.write_text(init.read_text() + f'\nBUILD_MARK = "{mark}"\n')
    started = time.perf_counter()
    log = build(changed, f"{IMAGE}:rebuilt", "MODEL_DIR=models").stdout
    seconds = time.perf_counter() - started
    print(f"\nrebuild after a code change: {seconds:.0f}s")
    assert "Using cache" in step_output(log, "pip install -r /tmp/requirements.txt")
    assert "Using cache" not in step_output(log, "pip wheel")
    built = docker("run", "--rm", "--entrypoint", "python", f"{IMAGE}:rebuilt", "-c", "import catdog; print(catdog.BUILD_MARK)")
    assert built.stdout.strip() == mark
    docker("image", "rm", f"{IMAGE}:rebuilt")


# ------------------------------------------------------------------- many containers: the Kubernetes Jobs (issue 12)

KUBERNETES = REPO / "deploy" / "kubernetes"


def expand_kubernetes_vars(text: str, env: dict[str, str]) -> str:
    """What Kubernetes does to command and args: `$(NAME)` becomes the container's env value, `$$` a
    literal `$`, and a reference to a name the container does not have stays as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def quantity(text: str) -> float:
    """A Kubernetes CPU or memory quantity ("500m", "2", "512Mi", "1Gi") as a number (CPUs, bytes)."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    found = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    assert found, text
    return float(found.group(1)) * units.get(found.group(2) or "", 1)


def docker_run_as_kubernetes(job: dict, image: str, volumes: dict[str, Path], given: dict[str, str]) -> list[str]:
    """`docker run` arguments that start the Job's pod as Kubernetes would: its uid and gid, read-only root
    file system, no capabilities, its CPU and memory limits, its volumes (read-only where the manifest
    says; an emptyDir as a tmpfs), its env (`given` supplies what the cluster would: the completion index), its command and args
    with $(VAR) expanded. `image` replaces the manifest's, `volumes` maps volume names to host folders."""
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
    args = ["run", "--rm"]
    if "runAsUser" in pod_security:
        args += ["--user", f"{pod_security['runAsUser']}:{pod_security.get('runAsGroup', 0)}"]
    if security.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if "ALL" in security.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", "ALL"]
    if security.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    limits = container["resources"]["limits"]
    memory = str(int(quantity(limits["memory"])))
    args += ["--cpus", str(quantity(limits["cpu"])), "--memory", memory, "--memory-swap", memory]
    claims = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = claims[mount["name"]]
        if "emptyDir" in volume:
            args += ["--tmpfs", mount["mountPath"]]
            continue
        read_only = mount.get("readOnly") or volume.get("persistentVolumeClaim", {}).get("readOnly")
        args += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{':ro' if read_only else ''}"]
    env = dict(given)
    for var in container.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else given[var["name"]]
    for name, value in env.items():
        args += ["-e", f"{name}={value}"]
    words = [expand_kubernetes_vars(word, env) for word in container.get("command", []) + container.get("args", [])]
    assert not any("$(" in word for word in words), words
    if "command" in container:
        return args + ["--entrypoint", words[0], image, *words[1:]]
    return args + [image, *words]


def test_indexed_job_pods_and_the_merge_job_give_the_single_run_csv(images, photos, tmp_path):
    """The Indexed Job's N pods, started at once with the manifest's own args, user, limits and mounts,
    then the merge Job: its labels.csv is the single run's, byte for byte."""
    label_job = yaml.safe_load((KUBERNETES / "label-job.yaml").read_text())
    merge_job = yaml.safe_load((KUBERNETES / "merge-job.yaml").read_text())
    n = label_job["spec"]["completions"]
    assert label_job["spec"]["completionMode"] == "Indexed" and label_job["spec"]["parallelism"] == n > 1
    out = writable_dir(tmp_path / "out")
    pods = [docker_run_as_kubernetes(label_job, images["baked"], {"photos": photos, "labels": out}, {"JOB_COMPLETION_INDEX": str(k)})
            for k in range(n)]
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda args: docker(*args, check=False), pods))
    for k, result in enumerate(results):
        assert result.returncode == 0, (k, result.args, result.stderr)
        assert f"-> /out/labels-{k}.csv" in result.stderr
    shards = [f"labels-{k}.csv" for k in range(n)]
    assert sorted(p.name for p in out.iterdir()) == sorted(shards + [f"{name}.{what}" for name in shards for what in ("job.json", "files")])
    merged = docker(*docker_run_as_kubernetes(merge_job, images["baked"], {"labels": out}, {}))
    assert f"merged {n} shards of /data" in merged.stderr
    single = writable_dir(tmp_path / "single")
    docker("run", "--rm", "-v", f"{photos}:/data:ro", "-v", f"{single}:/out", images["baked"],
           "predict-folder", "/data", "--out", "/out/labels.csv")
    assert (out / "labels.csv").read_bytes() == (single / "labels.csv").read_bytes()
    assert_labels(out / "labels.csv")


def test_merge_job_refuses_a_missing_shard_in_one_line(images, photos, tmp_path):
    """The merge Job with one shard's CSV gone fails with catdog's one-line error (what kubectl logs shows)."""
    label_job = yaml.safe_load((KUBERNETES / "label-job.yaml").read_text())
    merge_job = yaml.safe_load((KUBERNETES / "merge-job.yaml").read_text())
    n = label_job["spec"]["completions"]
    out = writable_dir(tmp_path / "out")
    for k in (0, n - 1):
        docker(*docker_run_as_kubernetes(label_job, images["baked"], {"photos": photos, "labels": out}, {"JOB_COMPLETION_INDEX": str(k)}))
    result = docker(*docker_run_as_kubernetes(merge_job, images["baked"], {"labels": out}, {}), check=False)
    missing = ", ".join(f"{k}/{n}" for k in range(1, n - 1))
    assert_one_line_error(result, f"error: shard {missing} of /data missing: pass all {n} shard CSVs of the job")
    assert not (out / "labels.csv").exists()
