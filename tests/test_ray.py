"""The Ray engine on a real two-node Ray cluster on this machine (loopback only, no dashboard, small object store):
the same CSV as the local engine, and a killed worker process never costs a row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import catdog, cli_env

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")

RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_address():
    """A head node and one more node, 1 CPU each, bound to 127.0.0.1; shut down (every process) afterwards."""
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(**{k: v for k, v in node.items() if k != "include_dashboard"})
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ray_env() -> dict[str, str]:
    return {**cli_env(), **RAY_ENV}


@pytest.fixture(scope="module")
def local_csv(real_photos, tiny_bundle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "labels.csv"
    catdog("predict-folder", real_photos, "--model", tiny_bundle, "--out", out, "--batch-size", "8")
    return out


def test_ray_engine_on_two_nodes_writes_the_local_engines_csv(ray_address, real_photos, tiny_bundle, local_csv, tmp_path):
    out = tmp_path / "labels.csv"
    result = catdog(
        "predict-folder", real_photos, "--model", tiny_bundle, "--out", out, "--batch-size", "8",
        "--engine", "ray", "--ray-address", ray_address.address, env=ray_env(), timeout=300,
    )
    assert out.read_bytes() == local_csv.read_bytes()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labeled 46 files: 41 ok, 5 error"), "no Ray log lines: " + result.stderr
    assert "unsupported format: EPS" in out.read_text()


def test_ray_engine_survives_a_killed_worker_process(ray_address, real_photos, tiny_bundle, local_csv, tmp_path):
    """SIGKILL an actor's worker process mid-run: Ray restarts it and reruns its batch; the CSV is complete."""
    out = tmp_path / "labels.csv"
    env = ray_env()
    driver = subprocess.Popen(
        [sys.executable, "-m", "catdog", "predict-folder", str(real_photos), "--model", str(tiny_bundle), "--out", str(out),
         "--batch-size", "2", "--engine", "ray", "--ray-address", ray_address.address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and driver.poll() is None:
            victim = labeler_worker(ray_address)
            time.sleep(0.05)
        assert victim is not None, "no labeling worker process appeared"
        os.kill(victim, signal.SIGKILL)
        assert driver.poll() is None, "the run ended before the worker was killed"
        _, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    print(f"killed worker {victim}; driver exit {driver.returncode}: {stderr.strip().splitlines()[-1:]}")
    if driver.returncode == 0:
        assert out.read_bytes() == local_csv.read_bytes()
    else:  # the only other outcome allowed: a one-line error, progress kept, no CSV with missing rows
        assert driver.returncode == 1 and stderr.strip().splitlines()[-1].startswith("error: "), stderr
        assert not out.exists() and out.with_name(out.name + ".progress.json").exists()
        catdog("predict-folder", real_photos, "--model", tiny_bundle, "--out", out, "--batch-size", "2", "--resume", env=ray_env())
        assert out.read_bytes() == local_csv.read_bytes()


def test_more_cpus_per_actor_than_any_node_has_is_a_one_line_error(ray_address, real_photos, tiny_bundle, tmp_path):
    """Ray would wait for such a node for ever, printing nothing."""
    result = catdog(
        "predict-folder", real_photos, "--model", tiny_bundle, "--out", tmp_path / "l.csv", "--engine", "ray",
        "--ray-address", ray_address.address, "--ray-cpus-per-actor", "2", env=ray_env(), check=False, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --ray-cpus-per-actor 2: no node of the cluster has that many CPUs (the largest has 1)"


def labeler_worker(cluster) -> int | None:
    """The PID of a worker process of this test's own cluster (a child of one of its raylets) running the labeler."""
    raylets = [
        proc.process.pid
        for node in [cluster.head_node, *cluster.worker_nodes]
        for proc in node.all_processes.get("raylet", [])
    ]
    for pid in raylets:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"Labeler" in title:
                return child
    return None


def test_ray_engine_without_ray_says_how_to_install_it(tiny_bundle, tmp_path):
    (tmp_path / "in").mkdir()
    blocker = tmp_path / "no_ray"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('ray hidden by the test')\n")
    env = {**ray_env(), "PYTHONPATH": str(blocker)}
    result = catdog("predict-folder", tmp_path / "in", "--model", tiny_bundle, "--out", tmp_path / "x.csv", "--engine", "ray", env=env, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == 'error: --engine ray needs Ray Data: pip install "catdog[ray]" (or pip install "ray[data]")'


def test_import_catdog_and_help_load_neither_ray_nor_tensorflow():
    code = (
        "import sys, catdog, catdog.cli, catdog.labeling.predict, catdog.labeling.sources, catdog.labeling.labels, catdog.labeling.engines\n"
        "print(sorted(m for m in ('ray', 'tensorflow', 'pyarrow') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert result.stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "catdog", "--help"], capture_output=True, text=True, env=cli_env())
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not {"ray", "tensorflow"} & imported


KILL_AFTER_BLOCKS = """
import os, runpy, signal, sys
import catdog.labeling.labels as labels

saved, killed = (int(n) for n in os.environ["CATDOG_TEST_KILL_AFTER_BLOCKS"].split(","))
write_block = labels.LabelsCSV.write_block
blocks = 0

def write_then_die(self, *args):
    global blocks
    write_block(self, *args)
    blocks += 1
    if blocks == saved:  # as if a second had passed: the progress is saved here
        self.save()
    if blocks == killed:
        os.kill(os.getpid(), signal.SIGKILL)

labels.LabelsCSV.write_block = write_then_die
sys.argv = ["catdog", *sys.argv[1:]]
runpy.run_module("catdog", run_name="__main__")
"""


def test_a_ray_run_killed_between_blocks_resumes_to_the_same_csv(ray_address, real_photos, tiny_bundle, local_csv, tmp_path):
    """46 files in 8 blocks: the progress is saved after the third block (and only then, however slow the blocks
    come), the driver SIGKILLed right after the fifth (two blocks written but not yet saved); --resume redoes those
    two and finishes the same CSV."""
    from catdog.labeling.ray_engine import block_rows

    rows = block_rows(46, 2, 2)
    assert 46 / rows >= 6
    out = tmp_path / "labels.csv"
    args = ["predict-folder", str(real_photos), "--model", str(tiny_bundle), "--out", str(out), "--batch-size", "2",
            "--engine", "ray", "--ray-address", ray_address.address]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_BLOCKS, *args], env={**ray_env(), "CATDOG_TEST_KILL_AFTER_BLOCKS": "3,5", "CATDOG_PROGRESS_SECONDS": "3600"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists()
    progress = json.loads(out.with_name(out.name + ".progress.json").read_text())
    assert progress["ok"] + progress["error"] == 3 * rows
    assert out.with_name(out.name + ".partial").read_bytes().count(b"\r\n") == 1 + 5 * rows
    catdog(*args, "--resume", env=ray_env(), timeout=300)
    assert out.read_bytes() == local_csv.read_bytes()


def test_an_update_on_the_ray_engine_labels_only_new_files_and_writes_a_fresh_runs_csv(ray_address, real_photos, tiny_bundle, tmp_path):
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(real_photos, photos)
    out = tmp_path / "labels.csv"
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", out, "--batch-size", "8")
    cats = sorted((photos / "train" / "cats").iterdir())
    shutil.copy2(cats[0], photos / "train" / "cats" / "added-1.jpg")
    shutil.copy2(cats[1], photos / "zz-added-2.jpg")
    cats[2].unlink()
    result = catdog(
        "predict-folder", photos, "--model", tiny_bundle, "--out", out, "--batch-size", "8", "--update",
        "--engine", "ray", "--ray-address", ray_address.address, env=ray_env(), timeout=300,
    )
    assert "kept 40, labeled 7, dropped 1" in result.stderr  # two new files, and the five error rows again
    catdog("predict-folder", photos, "--model", tiny_bundle, "--out", tmp_path / "fresh.csv", "--batch-size", "8")
    assert out.read_bytes() == (tmp_path / "fresh.csv").read_bytes()
