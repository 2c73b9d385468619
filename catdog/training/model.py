"""Model architectures. Each takes raw 0-255 RGB and rescales inside the model, so saved models carry their preprocessing.

- `seed_cnn`: the course notebook's model and optimizer, the reference row.
- `small_cnn`: a compact from-scratch CNN with batch norm, global pooling and dropout.
- `mobilenet_v2`: ImageNet MobileNetV2 (frozen, then optionally the top blocks fine-tuned) plus a logistic head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catdog.errors import CatdogError
from catdog.training.params import TrainParams
from catdog.tfsetup import import_tf

tf = import_tf()
import keras  # noqa: E402
from keras import layers  # noqa: E402

BACKBONE = "mobilenetv2"


def seed_cnn(image_size: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            layers.Rescaling(1 / 255),
            layers.Conv2D(16, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(512, activation="relu"),
            layers.Dense(1, activation="sigmoid"),
        ],
        name="seed_cnn",
    )


def small_cnn(image_size: int, dropout: float) -> keras.Model:
    # One conv per block, five blocks: a third of the FLOPs of two convs per block (557 vs 1689 MFLOPs
    # at 128 px), so ~2.3x the epochs fit the same CPU time. Batch-norm momentum 0.9 (not 0.99): with
    # ~50 steps an epoch the moving statistics must follow the weights faster; with 0.99 the val
    # accuracy of a 128 px run sat at 0.50 for its first 9 epochs.
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    blocks = (32, 64, 128, 256, 256)
    for i, filters in enumerate(blocks):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        if i < len(blocks) - 1:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def mobilenet_v2(image_size: int, alpha: float, dropout: float, weights: Path) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    try:
        base = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False, weights=str(weights)
        )
    except (ValueError, OSError) as exc:
        raise CatdogError(f"cannot load MobileNetV2 alpha {alpha} weights from {weights}: {' '.join(str(exc).split())[:200]}") from None
    base.name = BACKBONE
    base.trainable = False
    x = base(x, training=False)  # batch norm stays in inference mode, also while fine-tuning
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def build_model(params: TrainParams, image_size: int, weights: Path | None) -> keras.Model:
    """The model named by `params.model`, uncompiled."""
    if params.model == "seed_cnn":
        return seed_cnn(image_size)
    if params.model == "small_cnn":
        return small_cnn(image_size, params.dropout)
    if weights is None or not Path(weights).is_file():
        raise CatdogError(f"mobilenet_v2 needs the backbone weights file; not found: {weights}")
    return mobilenet_v2(image_size, params.alpha, params.dropout, Path(weights))


def optimizer(params: TrainParams, learning_rate) -> keras.optimizers.Optimizer:
    """The model's optimizer; `learning_rate` is a float or a Keras schedule.

    `params.weight_decay` is decoupled (AdamW-style: kernel -= weight_decay * learning_rate * kernel) and
    spares batch-norm scales and offsets and biases.
    """
    kind = keras.optimizers.RMSprop if params.model == "seed_cnn" else keras.optimizers.Adam
    opt = kind(learning_rate=learning_rate, weight_decay=params.weight_decay or None)
    if params.weight_decay:
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


@keras.saving.register_keras_serializable(package="catdog")
def hard_label_accuracy(y_true, y_pred):
    """Binary accuracy against the rounded label, so mixed-up (soft) training labels count as their majority class."""
    return keras.metrics.binary_accuracy(keras.ops.round(y_true), y_pred)


def accuracy_metric() -> keras.metrics.Metric:
    return keras.metrics.MeanMetricWrapper(hard_label_accuracy, name="accuracy")


def first_open_block(model: keras.Model, blocks: int) -> int:
    """The first inverted-residual block of the backbone that `unfreeze_top_blocks(model, blocks)` opens."""
    base = model.get_layer(BACKBONE)
    block_ids = sorted({int(l.name.split("_")[1]) for l in base.layers if l.name.startswith("block_")})
    return block_ids[-blocks] if blocks <= len(block_ids) else block_ids[0]


def unfreeze_top_blocks(model: keras.Model, blocks: int) -> int:
    """Make the last `blocks` inverted-residual blocks of the backbone (and its final conv) trainable.

    Returns the number of backbone layers made trainable. Batch-norm layers stay frozen.
    """
    base = model.get_layer(BACKBONE)
    first = first_open_block(model, blocks)
    base.trainable = True
    opened = 0
    tail = False
    for layer in base.layers:
        if layer.name.startswith(f"block_{first}_"):
            tail = True
        layer.trainable = tail and not isinstance(layer, layers.BatchNormalization)
        opened += int(layer.trainable)
    return opened


# The pet score's features (catdog.training.detector): pooled outputs of the *ImageNet* backbone's last block and
# final conv. Measured on held-out breeds and classes (README, "Neither a cat nor a dog"), they separate pets from
# other things better than the fine-tuned features, which have learnt to ignore what does not tell a cat from a dog.
PET_LAYERS = ("block_16_project_BN", "out_relu")


@dataclass
class PetGraph:
    """A new graph over the trained model's layers: its input, p_dog (n, 1) and the pooled pet features."""

    inputs: object
    p_dog: object
    pooled: list


def pet_graph(model: keras.Model, params: TrainParams, weights: Path | None, first_tuned: int | None) -> PetGraph:
    """The trained classifier rewired to also expose the pet features.

    mobilenet_v2: PET_LAYERS of the ImageNet backbone. When fine-tuning changed blocks `first_tuned` and up,
    an ImageNet copy of just those blocks (loaded from `weights`) runs beside them on the shared lower blocks'
    output, so the features stay ImageNet's at the cost of the top blocks only. Other models: the input of the
    final Dense layer (the classifier's own penultimate features).
    """
    if params.model != "mobilenet_v2":
        return PetGraph(model.inputs[0], model.output, [model.layers[-1].input])
    size = model.inputs[0].shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    rescale, base = (next(l for l in model.layers if isinstance(l, kind)) for kind in (layers.Rescaling, keras.Model))
    pool, dropout, dense = model.layers[-3:]
    x = rescale(inputs)
    if first_tuned is None:
        trunk = keras.Model(base.inputs, [base.get_layer(n).output for n in PET_LAYERS], name="trunk")
        taps = trunk(x)
        top = taps[PET_LAYERS.index("out_relu")]
    else:
        split = f"block_{first_tuned}_expand"
        imagenet = keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=params.alpha, include_top=False, weights=str(weights)
        )
        tail = keras.Model(imagenet.get_layer(split).input, [imagenet.get_layer(n).output for n in PET_LAYERS], name="imagenet_top")
        tail.trainable = False
        trunk = keras.Model(base.inputs, [base.get_layer(split).input, base.output], name="trunk")
        shared, top = trunk(x)
        taps = tail(shared)
    p_dog = dense(dropout(pool(top)))
    pooled = [layers.GlobalAveragePooling2D(name=f"pet_pool_{i}")(t) for i, t in enumerate(taps)]
    return PetGraph(inputs, p_dog, pooled)


def _flops(layer: keras.layers.Layer) -> int:
    if hasattr(layer, "layers"):
        return sum(_flops(inner) for inner in layer.layers)
    try:
        out = layer.output.shape
    except (AttributeError, ValueError):
        return 0
    if isinstance(layer, layers.DepthwiseConv2D):
        kh, kw = layer.kernel_size
        return 2 * kh * kw * out[1] * out[2] * out[3]
    if isinstance(layer, layers.Conv2D):
        kh, kw = layer.kernel_size
        cin = layer.input.shape[-1]
        return 2 * kh * kw * cin * out[1] * out[2] * out[3]
    if isinstance(layer, layers.Dense):
        return 2 * layer.input.shape[-1] * out[-1]
    return 0


def flops_per_image(model: keras.Model) -> int:
    """Multiply-adds x 2 of the convolution and dense layers for one image (the dominant cost)."""
    return int(sum(_flops(layer) for layer in model.layers))
