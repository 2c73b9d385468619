"""Reviewing experiments: params, metrics and plots diffs on a tiny pipeline."""

import json

import pytest

from conftest import make_project, run, tiny_overrides

PLOT_TITLES = ("Confusion matrix (test)", "ROC curve (test)", "Precision-recall curve (test)", "Loss per epoch", "Accuracy per epoch")


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, tiny_dataset_zip):
    """A committed baseline run and an experiment applied to the workspace."""
    project = make_project(tmp_path_factory.mktemp("review") / "project", tiny_overrides(tiny_dataset_zip))
    run(["dvc", "repro"], cwd=project)
    run(["git", "add", "-A"], cwd=project)
    run(["git", "commit", "-qm", "baseline"], cwd=project)
    run(
        ["dvc", "exp", "run", "-n", "fixed-threshold",
         "-S", "train.threshold=fixed", "-S", "train.fixed_threshold=0.9", "-S", "train.learning_rate=1e-05"],
        cwd=project,
    )
    return project


@pytest.mark.integration
def test_params_diff_shows_the_experiments_changes_with_their_types(reviewed):
    diff = json.loads(run(["dvc", "params", "diff", "--json"], cwd=reviewed).stdout)["params.yaml"]
    assert diff["train.threshold"] == {"old": "accuracy", "new": "fixed"}
    assert diff["train.fixed_threshold"]["new"] == 0.9
    meta = json.loads((reviewed / "models/meta.json").read_text())
    assert meta["train_params"]["learning_rate"] == 1e-05 and isinstance(meta["train_params"]["learning_rate"], float)
    assert meta["threshold"] == 0.9


@pytest.mark.integration
def test_metrics_diff_reports_the_changed_metric(reviewed):
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], cwd=reviewed).stdout)
    test_threshold = diff["metrics.json"]["test.threshold"]
    assert test_threshold["new"] == 0.9 and test_threshold["old"] != 0.9
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], cwd=reviewed).stdout)
    test = shown[""]["data"]["metrics.json"]["data"]["test"]
    assert test["accuracy_ci95"]["low"] <= test["accuracy"] <= test["accuracy_ci95"]["high"]
    shown = run(["dvc", "exp", "show", "--json"], cwd=reviewed).stdout
    assert "fixed-threshold" in shown


@pytest.mark.integration
def test_plots_show_renders_every_declared_plot_into_one_page(reviewed, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "show")], cwd=reviewed)
    page = (tmp_path / "show" / "index.html").read_text()
    for title in PLOT_TITLES:
        assert title in page
    assert "worst.png" in page and list((tmp_path / "show" / "static").glob("*worst.png"))

    run(["dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "diff")], cwd=reviewed)
    assert "ROC curve (test)" in (tmp_path / "diff" / "index.html").read_text()
