from pathlib import Path

import pytest
import yaml

from catdog.errors import CatdogError
from catdog.training.params import load_params, parse_params
from conftest import REPO

MINIMAL = {"fetch": {"dataset": {"url": "data.zip"}, "weights": {"url": "w.h5"}}}


def test_repo_params_file_loads_with_typed_sections():
    params = load_params(REPO / "params.yaml")
    assert params.train.model == "mobilenet_v2"
    assert params.base.classes == ("cat", "dog")
    assert isinstance(params.train.fine_tune_learning_rate, float)


def test_unknown_key_is_rejected_with_its_dotted_name(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "train": {"lerning_rate": 0.1}}))
    with pytest.raises(CatdogError, match=r"train\.lerning_rate: unknown key"):
        load_params(path)


def test_unknown_section_is_rejected():
    with pytest.raises(CatdogError, match="tran: unknown key"):
        parse_params({**MINIMAL, "tran": {}})


def test_dvc_set_style_strings_load_with_the_right_types(tmp_path: Path):
    # `dvc exp run -S train.fine_tune_learning_rate=1e-05` writes 1e-05, which YAML 1.1 reads as a string.
    path = tmp_path / "params.yaml"
    path.write_text(
        "fetch: {dataset: {url: d.zip}, weights: {url: w.h5}}\n"
        "train: {fine_tune_learning_rate: 1e-05, learning_rate: 3e-4, epochs: '3', augment: 'false', alpha: 0.35}\n"
        "base: {image_size: '96'}\n"
    )
    params = load_params(path)
    assert params.train.fine_tune_learning_rate == pytest.approx(1e-5)
    assert isinstance(params.train.fine_tune_learning_rate, float)
    assert params.train.learning_rate == pytest.approx(3e-4)
    assert params.train.epochs == 3 and params.base.image_size == 96
    assert params.train.augment is False
    assert params.train.alpha == 0.35


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train": {"model": "resnet"}}, "train.model"),
        ({"train": {"alpha": 0.75}}, "train.alpha"),
        ({"base": {"classes": ["dog", "cat"]}}, "base.classes"),
        ({"split": {"val_fraction": 0.6, "test_fraction": 0.5}}, "below 1"),
        ({"fetch": {"dataset": {"url": "d.zip", "sha256": "abc"}, "weights": {"url": "w"}}}, "fetch.dataset.sha256"),
        ({"fetch": {"dataset": {"url": "d.zip"}, "weights": {"url": "w"}, "timeout_s": float("inf")}}, "fetch.timeout_s"),
        ({"split": {"class_map": {"cat": "cat", "Cat": "dog"}}}, "split.class_map.*'Cat' is mapped to both"),
    ],
)
def test_invalid_values_name_the_key(override, message):
    with pytest.raises(CatdogError, match=message):
        parse_params({**MINIMAL, **override})


def test_missing_or_broken_params_file_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(CatdogError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(CatdogError, match="invalid YAML") as info:
        load_params(bad)
    assert "\n" not in str(info.value)
