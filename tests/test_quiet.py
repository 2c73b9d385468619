"""Output is for people (issue 14): catdog's commands print their progress, Keras' line per epoch and one-line
summaries, but none of TensorFlow's, absl's, CUDA's, oneDNN's or LiteRT's own log lines unless asked for
(`catdog --verbose`, or CATDOG_LOG_LEVEL=debug). The commands run as a user runs them: cli_env() sets no
log-level variable."""

from __future__ import annotations

import os
import re

from conftest import catdog, cli_env, library_log_lines


def test_native_log_lines_are_dropped_and_other_stderr_output_kept(capfd, monkeypatch):
    from catdog.logs import native_stderr_filtered

    monkeypatch.delenv("CATDOG_LOG_LEVEL", raising=False)
    with native_stderr_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796123096.707039    5504 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"a real problem\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "a real problem\n"

    monkeypatch.setenv("CATDOG_LOG_LEVEL", "debug")
    with native_stderr_filtered():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert capfd.readouterr().err == "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


def test_train_prints_its_epochs_and_summary_and_no_library_logs(tiny_bundle):
    output = (tiny_bundle.parent / "train-output.txt").read_text()
    assert library_log_lines(output) == [], output
    assert re.search(r"accuracy: [\d.]+ - loss: [\d.]+ - val_accuracy", output), output  # Keras' epoch line stays
    assert "trained 1 epochs; val accuracy" in output, output


def test_evaluate_and_predict_folder_print_their_summaries_and_no_library_logs(tiny_bundle, tmp_path):
    root = tiny_bundle.parent
    evaluated = catdog(
        "evaluate", "--params", root / "params.yaml", "--model", tiny_bundle, "--test", root / "val.csv",
        "--images", root / "images", "--metrics", tmp_path / "metrics.json", "--plots-dir", tmp_path / "plots",
    )
    output = evaluated.stdout + evaluated.stderr
    assert library_log_lines(output) == [], output
    assert "test accuracy" in output, output
    for runtime in ("litert", "keras"):
        labeled = catdog("predict-folder", root / "images", "--model", tiny_bundle, "--out", tmp_path / f"{runtime}.csv", "--runtime", runtime)
        output = labeled.stdout + labeled.stderr
        assert library_log_lines(output) == [], output
        assert "labeled 44 files: 44 ok, 0 error" in output, output


def test_verbose_and_debug_level_bring_the_library_logs_back(tiny_bundle, tmp_path):
    images = tiny_bundle.parent / "images"
    verbose = catdog("--verbose", "predict-folder", images, "--model", tiny_bundle, "--out", tmp_path / "a.csv", "--runtime", "litert")
    debug = catdog(
        "predict-folder", images, "--model", tiny_bundle, "--out", tmp_path / "b.csv", "--runtime", "litert",
        env={**cli_env(), "CATDOG_LOG_LEVEL": "debug"},
    )
    for result in (verbose, debug):
        output = result.stdout + result.stderr
        assert "INFO: Created TensorFlow Lite XNNPACK delegate" in output, output
        assert "labeled 44 files" in output, output
