"""The models: the slice model of stage 1 and the series model of stage 2.

**Slice model.** A backbone of :data:`rsna.backbones.BACKBONES` (a ``keras.applications``
constructor or a small CNN) and a six-sigmoid head. The input is uint8 (size, size,
channels), rescaled inside the model, so the data pipeline moves bytes. Each backbone
then gets the input scaling its pretrained weights expect (the table's ``scaling``),
built from standard layers (Rescaling, Normalization) so models load with
``safe_mode=True``.

``model.weights`` is "random" (random init; so is None here, which ``rsna train``
refuses before this is reached: rsna.preflight), a local Keras weights file of the
backbone without its top, or "imagenet" (downloaded; only when asked). Each backbone gets the
input layers its weights were trained with, EfficientNet's imagenet-only rescaling
included. Pretrained stems take 3 channels; with more (context slices), a 1x1
convolution that starts as the centre slice's windows maps them to 3 first.

Layers named for later stages: ``features`` (the pooled embedding), ``logits`` and
``probabilities`` (float32 even under mixed precision).

**Series model.** A masked bidirectional GRU over each series' slice inputs, whose
per-slice correction is added to the stage-1 logits (:func:`build_sequence_model`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from rsna.backbones import BACKBONES, HUB, Backbone
from rsna.config import Config, ConfigError
from rsna.data.augment import Augment
from rsna.data.labels import LABELS
from rsna.errors import RsnaError
from rsna.metrics import PRIOR_EPS, logit
from rsna.training.precision import resolve_precision

__all__ = [
    "BN_MOMENTUM",
    "MAX_INFLATION",
    "MAX_MODEL_BYTES",
    "ModelFileError",
    "ADAPTER",
    "check_slice_model",
    "SubtypeL2",
    "build_model",
    "build_sequence_model",
    "context_adapter",
    "device_augment",
    "dtype_policy",
    "load_model",
    "no_decay_variables",
    "small_cnn",
]

#: Batch-norm momentum of the small CNN: with few steps per epoch, Keras's 0.99 leaves
#: the inference statistics far behind the weights, and validation swings wildly.
BN_MOMENTUM = 0.9
#: The name of the 1x1 convolution that maps context channels to a pretrained stem's 3.
ADAPTER = "channel_adapter"
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Build layers under a Keras dtype policy, then restore the previous one."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(config: Config, *, prior: np.ndarray | None = None) -> keras.Model:
    """The slice model of `config`, uncompiled.

    Args:
        config: the experiment config (image size, windows, context, model section).
        prior: per-label positive rates; the logits' bias starts at their log-odds, so
            the first epochs do not spend themselves learning the class balance.
    """
    channels = config.channels
    inputs = keras.Input(
        (config.image.size, config.image.size, channels), dtype="uint8", name="image"
    )
    policy = resolve_precision(config)[0].model.precision
    with dtype_policy(policy):
        x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
        if config.train.augment and config.augment.device:
            x = device_augment(x, config.augment, seed=config.train.seed)
        if config.model.backbone == "small_cnn":
            features = small_cnn(x)
        else:
            features = _backbone(x, config, channels)
        features = keras.layers.Activation("linear", dtype="float32", name="features")(features)
    x = keras.layers.Dropout(config.model.dropout, name="dropout")(features)
    bias = "zeros" if prior is None else keras.initializers.Constant(logit(prior, eps=PRIOR_EPS))
    logits = keras.layers.Dense(len(LABELS), bias_initializer=bias, dtype="float32", name="logits")(
        x
    )
    outputs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"rsna_{config.model.backbone}")


def device_augment(x: keras.KerasTensor, augment: Augment, *, seed: int) -> keras.KerasTensor:
    """``augment.device``: the flips, shift, zoom, rotation and level jitter of `augment`
    as Keras preprocessing layers on x in [0, 1], active in training only, each seeded
    from `seed`. Uncovered pixels are 0 (air), as the CPU warp leaves them.

    They approximate :func:`rsna.data.augment.augment`: one zoom for both axes, the
    brightness and contrast drawn once per image for every channel (the CPU's draw per
    window), and Keras's own order of the transforms.
    """
    interpolation = "nearest" if augment.interpolation == "nearest" else "bilinear"
    fill = {"fill_mode": "constant", "fill_value": 0.0, "interpolation": interpolation}
    levels = {"value_range": (0, 1)}
    k = keras.layers
    layers = []
    if augment.flip or augment.vflip:
        both = "horizontal_and_vertical"
        mode = both if augment.flip and augment.vflip else "horizontal" if augment.flip else "vertical"
        layers.append(k.RandomFlip(mode, seed=seed))
    if augment.shift:
        layers.append(k.RandomTranslation(augment.shift, augment.shift, seed=seed + 1, **fill))
    if augment.scale:
        layers.append(k.RandomZoom((-augment.scale, augment.scale), seed=seed + 2, **fill))
    if augment.rotate:
        layers.append(k.RandomRotation(augment.rotate / 360.0, seed=seed + 3, **fill))
    if augment.brightness:
        layers.append(k.RandomBrightness(augment.brightness, seed=seed + 4, **levels))
    if augment.contrast:
        layers.append(k.RandomContrast(augment.contrast, seed=seed + 5, **levels))
    for layer in layers:
        x = layer(x)
    return x


def small_cnn(
    x: keras.KerasTensor, *, widths: tuple[int, ...] = (16, 32, 64, 128)
) -> keras.KerasTensor:
    """A stride-2 stem, then Conv-BN-ReLU blocks with max pooling; average and max pooled.

    The stem's 3x3 kernels see every pixel of the full-resolution input (thin bleeds are
    a few pixels wide), while everything after it runs at half the size. Max pooling
    matters: a bleed is small, and averaging over the whole slice dilutes it.
    """
    x = keras.layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(widths):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}a")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}a")(x)
        x = keras.layers.ReLU(name=f"relu{i}a")(x)
        if i > 0:  # a second convolution once the maps are small enough to be cheap
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
            x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}b")(x)
            x = keras.layers.ReLU(name=f"relu{i}b")(x)
        if i < len(widths) - 1:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    average = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    peak = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    return keras.layers.Concatenate(name="pooled")([average, peak])


def _backbone(x: keras.KerasTensor, config: Config, channels: int) -> keras.KerasTensor:
    backbone = BACKBONES[config.model.backbone]
    weights = None if config.model.weights == "random" else config.model.weights
    if weights is not None and channels != 3:  # pretrained stems take 3 channels
        x = context_adapter(x, windows=len(config.image.windows), context=config.image.context)
        channels = 3
    if backbone.scaling == "preset":
        return _preset_backbone(x, Path(weights), size=config.image.size)
    x = _input_scaling(x, backbone.scaling, channels)
    return _pretrained(backbone, weights, size=config.image.size, channels=channels)(x)


def context_adapter(x: keras.KerasTensor, *, windows: int, context: int) -> keras.KerasTensor:
    """A 1x1 convolution from ``windows * (2 context + 1)`` channels to 3 that starts as
    the identity on the centre slice's windows (cycled when there are not 3), so training
    starts exactly where the single-slice pretrained model would."""
    channels = windows * (2 * context + 1)
    kernel = np.zeros((1, 1, channels, 3), np.float32)
    for k in range(3):
        kernel[0, 0, context * windows + k % windows, k] = 1.0
    return keras.layers.Conv2D(
        3, 1, kernel_initializer=keras.initializers.Constant(kernel), name=ADAPTER
    )(x)


def no_decay_variables(model: keras.Model) -> list[keras.Variable]:
    """The trainable variables weight decay must not shrink: every vector (biases, batch
    and layer norm scales and offsets) and the context adapter, which starts as the
    identity, not at zero.

    Decay on norms and biases only pulls them from their job; the fine-tuning recipes
    leave them out (BERT's AdamW excludes ``bias`` and ``LayerNorm``; timm's
    ``param_groups_weight_decay`` every parameter with ``ndim <= 1``).
    """
    return [
        v
        for v in model.trainable_variables
        if len(v.shape) <= 1 or v.path.split("/")[0] == ADAPTER
    ]


def _pretrained(backbone: Backbone, weights, *, size: int, channels: int) -> keras.Model:
    """The ``keras.applications`` backbone with the input layers its weights were trained
    with, loaded from `weights` (a local file, "imagenet", or None for random)."""
    constructor = getattr(keras.applications, backbone.constructor)
    build = dict(include_top=False, input_shape=(size, size, channels), pooling="avg")
    with warnings.catch_warnings():  # more than 3 channels is the point of context slices
        warnings.filterwarnings(
            "ignore", message="This model usually expects 1 or 3 input channels"
        )
        try:
            if weights == "imagenet":
                return _download_imagenet(constructor, backbone.name, **build)
            net = constructor(weights=None, **build)
        except ValueError as exc:
            raise ConfigError(
                f"`model.backbone`={backbone.name!r} cannot be built for this input: {exc}"
            ) from exc
    if weights is None:
        return net
    if backbone.imagenet_rescaling:
        net = _with_imagenet_rescaling(net)
    try:
        net.load_weights(Path(weights))
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(
            f"{weights}: `model.weights` do not fit {backbone.name} without its top "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    return net


def _preset_backbone(x: keras.KerasTensor, preset: Path, *, size: int) -> keras.KerasTensor:
    """A keras-hub preset folder's backbone with its weights, fed through its image
    converter's scale and offset (applied to 0-255), average-pooled to features."""
    keras_hub = _import_keras_hub()
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
        net = keras_hub.models.Backbone.from_preset(str(preset), image_shape=(size, size, 3))
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ConfigError(
            f"{preset}: `model.weights` is not a keras-hub image preset with an image "
            f"converter ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    x = keras.layers.Rescaling(
        scale=(255.0 * np.asarray(scale, np.float64)).tolist(),
        offset=np.asarray(offset, np.float64).tolist(),
        name="preset_scaling",
    )(x)
    features = net(x)
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="preset_pool")(features)
    return features


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as exc:
        raise ConfigError(
            f"`model.backbone`={HUB!r} needs keras-hub: pip install 'rsna[hub]'"
        ) from exc
    return keras_hub


def _with_imagenet_rescaling(net: keras.Model) -> keras.Model:
    """A copy of an EfficientNet B0-B7 with the rescaling Keras adds after its input
    normalisation only for ``weights="imagenet"`` (keras/src/applications/efficientnet.py:
    1/sqrt(std) per channel), so that ImageNet weights from a file see their own scale."""
    scale = [1.0 / float(np.sqrt(s)) for s in _IMAGENET_STD]

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        if isinstance(layer, keras.layers.Normalization):
            out = keras.layers.Rescaling(scale, name=f"{layer.name}_imagenet_rescaling")(out)
        return out

    return keras.models.clone_model(net, call_function=call)


def _download_imagenet(constructor, name: str, **build) -> keras.Model:
    """The backbone with Keras's ImageNet weights, downloaded (needs the internet)."""
    try:
        return constructor(weights="imagenet", **build)
    except Exception as exc:  # noqa: BLE001 - urllib, http and file errors all mean offline
        if isinstance(exc, ValueError) and "input" in str(exc):
            raise
        raise ConfigError(
            f"`model.weights`='imagenet' could not download the {name} weights "
            f"({type(exc).__name__}: {str(exc)[:200]}). Offline (Kaggle with the internet off), "
            "attach the Keras weights file as a dataset and set `model.weights` to its path, "
            'e.g. model.weights = "/kaggle/input/keras-weights/efficientnetb0_notop.h5"'
        ) from exc


def _input_scaling(x: keras.KerasTensor, family: str, channels: int) -> keras.KerasTensor:
    """From x in [0, 1] to the scaling `family` of :mod:`rsna.backbones`."""
    mean = _IMAGENET_MEAN if channels == 3 else np.full(channels, _IMAGENET_MEAN.mean())
    std = _IMAGENET_STD if channels == 3 else np.full(channels, _IMAGENET_STD.mean())
    if family == "unit":
        return x
    if family == "raw":
        return keras.layers.Rescaling(255.0, name="to_255")(x)
    if family == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name="to_pm1")(x)
    if family == "torch":
        return keras.layers.Normalization(mean=mean, variance=std**2, name="imagenet_norm")(x)
    x = keras.layers.Rescaling(255.0, name="to_255")(x)  # caffe: 0-255 minus the mean
    return keras.layers.Normalization(
        mean=mean * 255.0, variance=np.ones(channels), name="imagenet_mean"
    )(x)


def _series_branch(slices, mask, seq, *, suffix: str):
    """One series network: projection, masked BiGRU (and a Conv1D beside it), and a
    zero-initialised per-slice correction of the six logits."""
    boolean = keras.ops.cast(mask, "bool")
    x = keras.layers.Dense(seq.units, activation="relu", name=f"project{suffix}")(slices)
    x = keras.layers.Dropout(seq.dropout)(x)
    branches = [
        keras.layers.Bidirectional(
            keras.layers.GRU(seq.units, return_sequences=True), name=f"bigru{suffix}"
        )(x, mask=boolean)
    ]
    if seq.conv:  # a 1-D convolution along z beside the GRU (1st place); padding zeroed first
        local = keras.ops.multiply(x, keras.ops.expand_dims(mask, -1))
        branches.append(
            keras.layers.Conv1D(
                seq.units, seq.conv, padding="same", activation="relu", name=f"conv{suffix}"
            )(local)
        )
    if len(branches) > 1:
        x = keras.layers.Concatenate(name=f"branches{suffix}")(branches)
    else:
        x = branches[0]
    x = keras.layers.Dropout(seq.dropout)(x)
    penalty = SubtypeL2(seq.subtype_l2) if seq.subtype_l2 else None
    return keras.layers.Dense(
        len(LABELS),
        kernel_initializer="zeros",
        kernel_regularizer=penalty,
        name=f"correction{suffix}",
    )(x)


def _couple_to_any(correction, *, start: float):
    """Add to each subtype's correction a learned multiple (from ``start``) of the `any`
    correction: a bleed that the series rules out or confirms moves its subtypes with it."""
    any_correction = correction[..., -1:]
    shift = keras.layers.Dense(
        len(LABELS) - 1,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant(start),
        name="any_coupling",
    )(any_correction)
    shift = keras.layers.Concatenate(name="coupled")([shift, keras.ops.zeros_like(any_correction)])
    return keras.layers.Add(name="coupled_correction")([correction, shift])


@keras.saving.register_keras_serializable(package="rsna")
class SubtypeL2(keras.regularizers.Regularizer):
    """L2 on the five subtype columns of a (units, 6) correction kernel; the `any` column
    (the last, as in :data:`rsna.data.labels.LABELS`) is left free."""

    def __init__(self, strength: float) -> None:
        self.strength = float(strength)

    def __call__(self, kernel):
        return self.strength * keras.ops.sum(keras.ops.square(kernel[:, :-1]))

    def get_config(self) -> dict:
        return {"strength": self.strength}


def build_sequence_model(config: Config, width: int) -> keras.Model:
    """Masked BiGRU over (steps, width) slice inputs; six sigmoids per slice.

    When the inputs include stage-1 logits, the output logits are those plus a learned
    correction: the mean of ``sequence.bags`` networks' corrections, and with
    ``sequence.any_coupling`` a learned share of the `any` correction in each subtype's.
    """
    slices = keras.Input((None, width), name="slices")
    mask = keras.Input((None,), name="mask")
    seq = config.sequence
    if seq.bags == 1:
        correction = _series_branch(slices, mask, seq, suffix="")
    else:  # independently initialised networks whose corrections are averaged
        correction = keras.layers.Average(name="correction")(
            [_series_branch(slices, mask, seq, suffix=f"_{b}") for b in range(seq.bags)]
        )
    if seq.any_coupling:
        correction = _couple_to_any(correction, start=seq.any_coupling)
    if "logits" in config.sequence.inputs:
        # The first six inputs are the stage-1 logits; a frozen selection matrix passes them
        # through (a standard layer, so the model loads in safe mode; a Lambda would not).
        select = np.zeros((width, len(LABELS)), np.float32)
        select[np.arange(len(LABELS)), np.arange(len(LABELS))] = 1.0
        stage1 = keras.layers.Dense(
            len(LABELS),
            use_bias=False,
            trainable=False,
            kernel_initializer=keras.initializers.Constant(select),
            name="stage1_logits",
        )(slices)
        logits = keras.layers.Add(name="logits")([stage1, correction])
    else:
        logits = correction
    outputs = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities")(logits)
    return keras.Model({"slices": slices, "mask": mask}, outputs, name="rsna_sequence")


def _uses_keras_hub(path: Path) -> bool:
    """Whether a .keras archive's config names keras-hub classes (False if unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return b"keras_hub" in archive.read("config.json")
    except (zipfile.BadZipFile, KeyError, OSError):
        return False


class ModelFileError(RsnaError):
    """A saved model cannot be loaded: missing, truncated, tampered with, unsafe, too
    large once inflated, or not a model of the shape asked for."""


#: The most bytes a model archive may inflate to (every member together): four times
#: the largest backbone of the table in float32 (ConvNeXtLarge, 0.8 GB), for the
#: optimizer's state and headroom. A larger archive is refused before it is extracted.
MAX_MODEL_BYTES = 4 * 2**30
#: The most a member of over 64 MiB may inflate relative to its stored size: float
#: weights barely compress, so a member that inflates more is a zip bomb.
MAX_INFLATION = 100


def _check_archive(path: Path) -> None:
    """Refuse an archive whose members would inflate past the bounds, before reading any.

    Raises:
        ModelFileError: naming the member and its sizes.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: Keras's own error says what it is
    total = sum(m.file_size for m in members)
    if total > MAX_MODEL_BYTES:
        raise ModelFileError(
            f"{path}: the archive inflates to {total:,} bytes, more than "
            f"MAX_MODEL_BYTES={MAX_MODEL_BYTES:,}; refused before extracting it"
        )
    for m in members:
        if m.file_size > 64 * 2**20 and m.file_size > MAX_INFLATION * max(m.compress_size, 1):
            raise ModelFileError(
                f"{path}: member {m.filename} inflates from {m.compress_size:,} to "
                f"{m.file_size:,} bytes (more than {MAX_INFLATION}x); refused as a zip bomb"
            )


def check_slice_model(model: keras.Model, config: Config, *, path: str | os.PathLike[str]) -> None:
    """Refuse a loadable model that is not `config`'s slice model.

    Raises:
        ModelFileError: another input shape, not six outputs, or no ``features`` and
            ``logits`` layers (which embedding needs), naming what was expected.
    """
    size, channels = config.image.size, config.channels
    expected = (size, size, channels)
    inputs = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    outputs = model.output_shape if not isinstance(model.output_shape, list) else None
    names = {layer.name for layer in model.layers}
    problems = []
    if inputs != expected:
        problems.append(f"input {inputs} where the config gives {expected}")
    if outputs is None or outputs[-1] != len(LABELS):
        problems.append(f"output {model.output_shape} where {len(LABELS)} probabilities are expected")
    if not {"features", "logits"} <= names:
        problems.append("no `features` and `logits` layers")
    if problems:
        raise ModelFileError(
            f"{path}: not this config's slice model: {'; '.join(problems)}. Retrain the "
            "fold with `rsna train ... --retrain`, or point the config at the run that made it"
        )


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a saved model for prediction, with ``safe_mode=True`` (no code runs).

    Raises:
        ModelFileError: the file is missing, not a Keras archive, truncated, tampered
            with, or holds code (a Lambda layer) that safe mode refuses.
    """
    path = Path(path)
    _check_archive(path)
    if _uses_keras_hub(path):
        _import_keras_hub()  # registers keras-hub's classes for deserialisation
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad archive
        raise ModelFileError(
            f"{path}: cannot load the model ({type(exc).__name__}: {str(exc)[:300]}); "
            "retrain the fold with `rsna train ... --retrain`"
        ) from exc
