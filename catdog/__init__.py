"""catdog: a reproducible cat/dog classifier pipeline and batch labeler.

From Python: `catdog.load(bundle).classify(photos)`, `catdog.label_folder(source, out, model=...)` and
`catdog.read_labels(csv)` (see catdog.labeling.api). Importing the package is cheap: those names are
imported on first use, and TensorFlow only by the modules that train or evaluate a Keras model (data, model,
train), never by the CLI or the labeler.
"""

import importlib

__version__ = "0.1.0"

# Where each public name lives, imported on first access (PEP 562). The module name is looked up, not written
# as a literal import: no CLI command touches these names, so no dvc stage depends on the API module.
_LAZY = {
    "load": "catdog.labeling.api",
    "Labeler": "catdog.labeling.api",
    "Prediction": "catdog.labeling.api",
    "label_folder": "catdog.labeling.api",
    "read_labels": "catdog.labeling.api",
    "CatdogError": "catdog.errors",
}

__all__ = ["CatdogError", "Labeler", "Prediction", "__version__", "label_folder", "load", "read_labels"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'catdog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
