"""The whole pipeline, for real: `dvc repro` on the real photos, then a second repro that runs nothing."""

import csv
import json

import pytest

from conftest import WEIGHTS_035_SHA256, library_log_lines, make_project, run

STAGES = ("fetch", "split", "train", "evaluate", "predict-folder", "report")


@pytest.mark.integration
def test_dvc_repro_on_real_photos_produces_model_metrics_and_labels(tmp_path, real_dataset, real_weights):
    project = make_project(
        tmp_path / "project",
        {
            "base": {"image_size": 64},
            "fetch": {
                "dataset": {"url": str(real_dataset.zip), "sha256": real_dataset.sha256},
                "weights": {"url": real_weights.as_uri(), "sha256": WEIGHTS_035_SHA256},
            },
            "train": {"model": "mobilenet_v2", "alpha": 0.35, "epochs": 1, "fine_tune_epochs": 0},
        },
    )
    first = run(["dvc", "repro"], cwd=project)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    assert library_log_lines(first.stdout + first.stderr) == [], first.stdout + first.stderr

    (record_path,) = (project / "data/downloads").glob(f"*-{real_dataset.zip.name}.json")  # <digest of the URL>-<name>
    record = json.loads(record_path.read_text())
    assert record["sha256"] == real_dataset.sha256 and record["size"] == real_dataset.zip.stat().st_size

    report = json.loads((project / "data/split/report.json").read_text())
    assert report["counts"]["test"]["total"] + report["n_duplicates"] == 1000  # the source's validation split
    assert report["counts"]["train"]["total"] + report["counts"]["val"]["total"] == 2000

    metrics = json.loads((project / "metrics.json").read_text())["test"]
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "confusion", "n", "threshold", "accuracy_ci95"):
        assert key in metrics
    assert metrics["n"] == report["counts"]["test"]["total"]
    assert metrics["accuracy"] > 0.6, "even one epoch at 64 px beats chance"

    meta = json.loads((project / "models/meta.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 64
    assert (project / "models/model.keras").is_file() and (project / "models/model.tflite").is_file()

    files = sorted(p.relative_to(project / "data/raw/dataset").as_posix() for p in (project / "data/raw/dataset").rglob("*") if p.is_file())
    with open(project / "data/labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == files and len(files) == 3000
    assert {r["status"] for r in rows} == {"ok"}
    page = (project / "eval/labels_report.html").read_text(encoding="utf-8")
    assert "3,000" in page and "<svg" in page and "data:image/jpeg;base64," in page

    second = run(["dvc", "repro"], cwd=project)
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date." in second.stdout
    assert json.loads(run(["dvc", "status", "--json"], cwd=project).stdout) == {}
