"""catdog: a reproducible cat/dog classifier pipeline and batch labeler.

Importing the package is cheap: TensorFlow is imported only by the modules that train or
evaluate a Keras model (data, model, train), never by the CLI or the labeler.
"""

__version__ = "0.1.0"
