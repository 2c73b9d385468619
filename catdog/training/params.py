"""Typed pipeline parameters: params.yaml is read once, validated, and unknown keys are rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catdog.errors import CatdogError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    seed: int = 42
    image_size: int = Field(224, ge=32, le=1024)
    classes: tuple[str, str] = ("cat", "dog")

    @field_validator("classes")
    @classmethod
    def _cat_then_dog(cls, value: tuple[str, str]) -> tuple[str, str]:
        if tuple(value) != ("cat", "dog"):
            raise ValueError("must be [cat, dog]: the sigmoid output is p_dog")
        return value


class Source(_Section):
    url: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")


class FetchParams(_Section):
    dataset: Source
    weights: Source
    timeout_s: float = Field(30.0, gt=0, le=3600)
    retries: int = Field(4, ge=0)
    max_bytes: int = Field(4 * 1024**3, gt=0)
    max_files: int = Field(200_000, gt=0)


class SplitParams(_Section):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    class_map: dict[str, Literal["cat", "dog"]] = Field(
        default_factory=lambda: {"cat": "cat", "cats": "cat", "dog": "dog", "dogs": "dog"}
    )
    max_pixels: int = Field(50_000_000, gt=0)

    @field_validator("class_map")
    @classmethod
    def _one_class_per_folder_name(cls, value: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for name, label in value.items():
            if seen.setdefault(name.casefold(), label) != label:
                raise ValueError(f"folder names are matched case-insensitively, and {name!r} is mapped to both cat and dog")
        return value

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class NeitherParams(_Section):
    keep_pets: float = Field(0.995, gt=0, le=1)  # share of val pets whose pet_score must reach pet_threshold


class TrainParams(_Section):
    model: Literal["seed_cnn", "small_cnn", "mobilenet_v2"] = "mobilenet_v2"
    alpha: float = 0.5
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(12, ge=1)
    learning_rate: float = Field(0.001, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    fine_tune_epochs: int = Field(8, ge=0)
    fine_tune_blocks: int = Field(4, ge=1, le=16)
    fine_tune_learning_rate: float = Field(5e-5, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    augment: bool = True
    mixup: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    threshold: Literal["fixed", "accuracy", "f1"] = "fixed"
    fixed_threshold: float = Field(0.5, gt=0, lt=1)
    neither: NeitherParams = NeitherParams()

    @field_validator("alpha")
    @classmethod
    def _published_alpha(cls, value: float) -> float:
        if value not in (0.35, 0.5):
            raise ValueError("must be 0.35 or 0.5 (the published no-top weights fetch provides)")
        return value


class EvaluateParams(_Section):
    n_wrong: int = Field(16, ge=0, le=100)
    batch_size: int = Field(64, ge=1)
    nonpets: str = ""  # folder of non-pet photos; dvc.yaml passes it to `evaluate --nonpets` ("" = none)


class PredictParams(_Section):
    folder: str = Field("data/raw/dataset", min_length=1)  # the folder the predict-folder stage labels
    batch_size: int = Field(64, ge=1)

    @field_validator("folder")
    @classmethod
    def _quotable(cls, value: str) -> str:
        # dvc.yaml puts it in the stage's command between double quotes, where these would still be expanded.
        if any(c in value for c in '"$`\\\n\r'):
            raise ValueError('must not hold ", $, `, \\ or a line break (dvc.yaml puts it in a shell command)')
        return value


class Params(_Section):
    base: BaseParams = BaseParams()
    fetch: FetchParams
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    predict: PredictParams = PredictParams()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_params(raw: object, source: str = "params") -> Params:
    """Validate an already-loaded mapping (e.g. from YAML) into `Params`."""
    if not isinstance(raw, dict):
        raise CatdogError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise CatdogError(f"{source}: {_describe(exc)}") from None


def load_params(path: Path | str) -> Params:
    """Read and validate a params YAML file. Values such as `1e-05` (a string to YAML 1.1) coerce to float."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatdogError(f"params file not found: {path}") from None
    except UnicodeDecodeError:
        raise CatdogError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise CatdogError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    return parse_params(raw, str(path))
