"""Experiment configuration: one frozen dataclass per experiment, loaded from TOML.

Sections and keys (the shipped ``rsna/configs/demo.toml`` and ``baseline.toml`` are
examples)::

    [data]     work_dir, out_dir, cache, compression, quality
    [image]    size, windows, context, curve, crop, channels
    [model]    backbone, weights, dropout, precision (mixed_precision: deprecated)
    [train]    batch_size, epochs, learning_rate, schedule, warmup_epochs, min_learning_rate,
               patience, label_weights, augment, seed, deterministic,
               workers, jit_compile, scale_learning_rate, snapshots, sampling,
               per_study, centre_weight
    [augment]  flip, shift, scale, rotate, interpolation, vflip, crop_area, crop_ratio, erase,
               erase_holes, erase_size, brightness, contrast, zflip, device
    [predict]  tta, ensemble, clip, batch_size
    [sequence] inputs, units, dropout, conv, bags, epochs, batch_size, learning_rate, patience, tta_reverse, jitter, position,
               any_coupling, subtype_l2

Each TOML value is converted by the declared type of its field (``int``, ``float``,
``bool``, ``str``, a ``Literal`` of choices, ``Path``, ``Path | None``, a tuple of any of
these, or a tuple of windows). Unknown keys and bad values raise :class:`ConfigError`
naming the key. Relative paths are resolved against the current folder.
:func:`dump_config` writes the resolved config back as TOML, next to every run's
outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from rsna import files, runs
from rsna.backbones import BACKBONES, HUB, closest_backbone
from rsna.data.augment import Augment, device_unsupported
from rsna.data.codecs import DEFAULT_QUALITY, Codec, Compression, codec_for
from rsna.data.crop import Crop
from rsna.data.labels import LABELS
from rsna.data.sources import ImageSpec
from rsna.data.views import ViewError, expand_views
from rsna.data.windowing import MAX_SIZE, Curve, Window, parse_windows, window_name
from rsna.errors import RsnaError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "PRESET_CONFIG",
    "Config",
    "MAX_CONTEXT",
    "MAX_EPOCHS",
    "ConfigError",
    "DataConfig",
    "ImageConfig",
    "ModelConfig",
    "PredictConfig",
    "SequenceConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "experiment_changes",
    "experiment_record",
    "is_config_name",
    "load_config",
    "parse_override",
    "shipped_configs",
    "with_paths",
]

Schedule = Literal["cosine", "constant"]
Ensemble = Literal["mean", "logit_mean"]
SequenceInput = Literal["logits", "features"]
Channels = Literal["windows", "neighbours"]
Sampling = Literal["all", "study"]
Precision = Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"]


#: Most context slices on each side: 8 gives 17 slices, more than any RSNA solution used.
MAX_CONTEXT = 8
#: Most epochs of either stage.
MAX_EPOCHS = 10_000


#: The file that marks a folder as a keras-hub preset.
PRESET_CONFIG = "config.json"


class ConfigError(RsnaError):
    """A config file has an unknown key or a bad value."""


@dataclass(frozen=True)
class DataConfig:
    work_dir: Path = Path("work")
    out_dir: Path | None = None  # default: WORK_DIR/runs/<config name>
    cache: bool = True  # read the preprocessed store when it is built
    compression: Compression = "lossless"  # which store: none, lossless or lossy
    quality: int = DEFAULT_QUALITY  # JPEG quality of a lossy store


@dataclass(frozen=True)
class ImageConfig:
    size: int = 256
    windows: tuple[Window, ...] = parse_windows("brain,subdural,soft")
    context: int = 1
    curve: Curve = "linear"
    crop: Crop = "none"  # "head": cut each slice to the square around the head (rsna.data.crop)
    #: "windows": every window of every context slice is a channel (an adapter maps them to
    #: a pretrained stem's 3). "neighbours": slices s-1, s, s+1 in one window are the 3
    #: channels, as the 1st and 3rd places fed them; needs context = 1 and one window.
    channels: Channels = "windows"

    @property
    def spec(self) -> ImageSpec:
        """What a preprocessed store must hold to feed this config."""
        return ImageSpec(size=self.size, windows=self.windows, curve=self.curve, crop=self.crop)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "EfficientNetB0"  # a name of rsna.backbones.BACKBONES
    #: A local Keras weights file of the backbone without its top (``*_notop.h5`` or
    #: ``.weights.h5``; absent at its path, it is looked for by name under /kaggle/input,
    #: see rsna.preflight), "imagenet" to download Keras's (needs the internet), "random"
    #: to train from scratch, or for ``backbone = "keras_hub"`` a keras-hub preset folder.
    #: Unset (None), training refuses to start.
    weights: Literal["imagenet", "random"] | Path | None = None
    dropout: float = 0.2
    #: The Keras dtype policy of the backbone; "auto" picks by the devices
    #: (rsna.training.precision.precision_for). The head is float32 in every mode.
    precision: Precision = "auto"
    #: Deprecated: true means precision = "mixed_float16" (with a warning).
    mixed_precision: bool = False


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    schedule: Schedule = "cosine"
    warmup_epochs: int = 1
    min_learning_rate: float = 1e-6
    patience: int = 3
    label_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 2.0)
    augment: bool = True
    seed: int = 0
    #: Deterministic TF ops (tf.config.experimental.enable_op_determinism): the same config
    #: and seed give the same bits on the same machine, at some speed on GPUs.
    deterministic: bool = False
    workers: int = 1
    #: XLA compilation, passed to Keras's compile(jit_compile=...): "auto", true or false.
    jit_compile: Literal["auto"] | bool = "auto"
    #: The global batch size `learning_rate` was tuned for; when set (not 0), the rate is
    #: scaled linearly to `batch_size` (Goyal et al. 2017; the warm-up is the schedule's).
    scale_learning_rate: int = 0
    #: Keep the weights of the last N epochs and predict (OOF, test, embeddings) with the
    #: mean of their outputs instead of best.keras alone (2nd place's "Bag 5X"); 0: off.
    snapshots: int = 0
    #: "all": every training slice every epoch. "study": each epoch draws `per_study`
    #: slices a series, the middle `1 + centre_weight` times as likely as the ends (1st
    #: place drew 4 a study "weighted towards the middle"; the weight's form is ours);
    #: validation and OOF still cover every slice.
    sampling: Sampling = "all"
    per_study: int = 4
    centre_weight: float = 1.0
    #: Write TensorBoard logs (losses, each label's validation log loss, learning rate) to
    #: fold_k/tensorboard/; needs the tensorboard package (the "tensorboard" extra).
    tensorboard: bool = False

    @property
    def effective_learning_rate(self) -> float:
        """`learning_rate`, scaled to the global batch when `scale_learning_rate` is set."""
        if not self.scale_learning_rate:
            return self.learning_rate
        return self.learning_rate * self.batch_size / self.scale_learning_rate


@dataclass(frozen=True)
class PredictConfig:
    tta: tuple[str, ...] = ("none", "hflip")  # rsna.data.views: names, or random_crop:N
    ensemble: Ensemble = "mean"
    clip: float = 1e-5
    batch_size: int = 64


@dataclass(frozen=True)
class SequenceConfig:
    """The series model of stage 2 (rsna.training.stage2)."""

    inputs: tuple[SequenceInput, ...] = ("logits",)  # of the stage-1 model
    units: int = 64
    dropout: float = 0.1
    conv: int = 0  # kernel size of a 1-D convolution along z beside the GRU; 0 for none
    bags: int = 1  # series networks per model, each initialised apart; their corrections averaged
    epochs: int = 30
    batch_size: int = 8  # series per batch
    learning_rate: float = 3e-3
    patience: int = 8
    tta_reverse: bool = True  # also predict the reversed series and average
    jitter: float = 0.3  # random per-series scale and shift of the inputs while training
    position: bool = False  # add each slice's place in its series and its z gaps (series.GEOMETRY)
    #: Each subtype's correction also gets a learned multiple of the `any` correction,
    #: starting here (0 for none); see rsna.training.models.build_sequence_model.
    any_coupling: float = 0.0
    #: L2 penalty on the subtypes' columns of the correction layer (not `any`'s); 0 for none.
    subtype_l2: float = 0.0


@dataclass(frozen=True)
class Config:
    """One experiment."""

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: Augment = field(default_factory=Augment)
    predict: PredictConfig = field(default_factory=PredictConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)

    @property
    def run_dir(self) -> Path:
        """Where this experiment's outputs go."""
        return self.data.out_dir or self.data.work_dir / "runs" / self.name

    @property
    def channels(self) -> int:
        return len(self.image.windows) * (2 * self.image.context + 1)

    @property
    def codec(self) -> Codec:
        """How the store this config reads is compressed (``data.compression``)."""
        lossy = self.data.compression == "lossy"
        return codec_for(self.data.compression, quality=self.data.quality if lossy else None)

    def stage_dir(self, stage: int = 1) -> Path:
        """The folder of `stage` (1: slice model, 2: series model) in the run folder."""
        return runs.stage_dir(self.run_dir, stage)

    def fold_dir(self, fold: int, *, stage: int = 1) -> Path:
        """The folder of fold `fold` of `stage`."""
        return runs.fold_dir(self.stage_dir(stage), fold)


_SECTIONS = {
    "data": DataConfig,
    "image": ImageConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "augment": Augment,
    "predict": PredictConfig,
    "sequence": SequenceConfig,
}


def shipped_configs() -> list[str]:
    """The names of the configs shipped in ``rsna/configs``."""
    folder = resources.files("rsna") / "configs"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def is_config_name(path_or_name: str | os.PathLike[str]) -> bool:
    """True for the name of a shipped config: no folder separator and no ``.toml`` ending.

    The rule is lexical, so a file or folder in the current directory never shadows a
    shipped config: ``demo`` is always the shipped one, ``./demo.toml`` a file.
    """
    text = os.fspath(path_or_name)
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return bool(text) and not any(s in text for s in separators) and not text.endswith(".toml")


def load_config(
    path_or_name: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read a TOML config, by path or by the name of a shipped one (``"demo"``).

    A name without a folder separator and without ``.toml`` (see :func:`is_config_name`)
    is always a shipped config; anything else is a path.
    `overrides` maps ``"section.key"`` to values (from ``--set``).

    Raises:
        ConfigError: no such file or shipped config, unreadable TOML, an unknown
            section or key, or a bad value.
    """
    if is_config_name(path_or_name):
        name = os.fspath(path_or_name)
        resource = resources.files("rsna") / "configs" / f"{name}.toml"
        if not resource.is_file():
            close = difflib.get_close_matches(name, shipped_configs(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{name!r} is not a shipped config{hint} (shipped: {', '.join(shipped_configs())}). "
                f"A config file must be named with a folder or .toml: ./{name}.toml"
            )
        with resources.as_file(resource) as shipped:
            return load_config(shipped, overrides=overrides)
    path = Path(path_or_name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: a config must be UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{path}: override must be section.key=value. Received: {dotted!r}")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: `{section}` must be a table. Received: {table!r}")
        table[key] = value
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build and check a :class:`Config` from nested dicts (as TOML gives them)."""
    _check_keys(raw, ["name", *_SECTIONS], source, "")
    sections = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: `{name}` must be a table. Received: {table!r}")
        _check_keys(table, [f.name for f in fields(cls)], source, f"{name}.")
        hints = typing.get_type_hints(cls)
        values = {
            key: _convert(hints[key], value, source=source, key=f"{name}.{key}")
            for key, value in table.items()
        }
        try:
            sections[name] = cls(**values)
        except RsnaError as exc:
            raise ConfigError(f"{source}: [{name}] {exc}") from exc
    name = raw.get("name", "experiment")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: `name` must be a non-empty string. Received: {name!r}")
    config = _migrate(Config(name=name, **sections), source)
    _validate(config, source)
    return config


def _migrate(config: Config, source: str) -> Config:
    """Old keys in their new form, each with a deprecation warning."""
    if config.model.mixed_precision:
        explicit = config.model.precision != "auto"
        wins = f", but precision={config.model.precision!r} is set and wins" if explicit else ""
        warnings.warn(
            f'{source}: `model.mixed_precision` is deprecated; use `model.precision = "mixed_float16"` '
            f'(or "auto", which picks bfloat16 on TPUs and recent GPUs). Read as precision="mixed_float16"{wins}',
            DeprecationWarning,
            stacklevel=3,
        )
        precision = config.model.precision if explicit else "mixed_float16"
        config = replace(
            config, model=replace(config.model, precision=precision, mixed_precision=False)
        )
    return config


def _check_keys(table: Mapping[str, Any], allowed: list[str], source: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = (
                f"; did you mean `{prefix}{hint[0]}`?"
                if hint
                else f"; known keys: {', '.join(allowed)}"
            )
            raise ConfigError(f"{source}: unknown key `{prefix}{key}`{extra}")


def _convert(hint: Any, value: Any, *, source: str, key: str) -> Any:
    """Turn a TOML value into a field's declared type, or raise naming the key."""
    where, short = f"{source}: `{key}`", key.rpartition(".")[2]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`, or named choices | Path | None
        if value in ("", None) and type(None) in args:
            return None
        for choices in (a for a in args if typing.get_origin(a) is Literal):
            if value in typing.get_args(choices):
                return value
        inner = next(a for a in args if a is not type(None) and typing.get_origin(a) is not Literal)
        return _convert(inner, value, source=source, key=key)
    if origin is tuple:
        return _convert_tuple(args[0], value, source=source, key=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {args}. Received: {short}={value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false. Received: {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer. Received: {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number. Received: {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number. Received: {short}={value!r}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a path string. Received: {value!r}")
        return Path(value).expanduser().resolve()
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string. Received: {value!r}")
        return value
    raise ConfigError(f"{where}: no conversion for type {hint!r}")  # a field this code lacks


def _convert_tuple(item: Any, value: Any, *, source: str, key: str) -> tuple:
    where = f"{source}: `{key}`"
    if item is Window:  # names or center/width, as a list or one comma-separated string
        if not isinstance(value, (str, list)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(
                f"{where} must be a list of window names or center/width. Received: {value!r}"
            )
        try:
            return parse_windows(value)
        except RsnaError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    if typing.get_origin(item) is Literal:
        choices = typing.get_args(item)
        if not isinstance(value, list) or not value or any(v not in choices for v in value):
            raise ConfigError(f"{where} must be a non-empty list of {choices}. Received: {value!r}")
        return tuple(value)
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list. Received: {value!r}")
    return tuple(_convert(item, v, source=source, key=f"{key}[{i}]") for i, v in enumerate(value))


def _validate(config: Config, source: str) -> None:
    backbone = BACKBONES.get(config.model.backbone)
    if backbone is None:
        closest = closest_backbone(config.model.backbone)
        hint = f"; did you mean {closest!r}?" if closest else ""
        raise ConfigError(
            f"{source}: `model.backbone` must be one of rsna.backbones.BACKBONES{hint} "
            f"Received: backbone={config.model.backbone!r}"
        )
    checks = [
        (config.image.size >= 32, "image.size", config.image.size, "must be >= 32"),
        (1 <= config.data.quality <= 100, "data.quality", config.data.quality, "must be in [1, 100]"),
        (config.image.size <= MAX_SIZE, "image.size", config.image.size, f"must be at most {MAX_SIZE}"),
        (config.image.context <= MAX_CONTEXT, "image.context", config.image.context, f"must be at most {MAX_CONTEXT}"),
        (config.image.size >= backbone.min_size, "image.size", config.image.size, f"must be >= {backbone.min_size} for {backbone.name}"),
        (config.image.context >= 0, "image.context", config.image.context, "must be >= 0"),
        (0.0 <= config.model.dropout < 1.0, "model.dropout", config.model.dropout, "must be in [0, 1)"),
        (config.train.batch_size >= 1, "train.batch_size", config.train.batch_size, "must be positive"),
        (config.train.epochs >= 1, "train.epochs", config.train.epochs, "must be positive"),
        (config.train.learning_rate > 0, "train.learning_rate", config.train.learning_rate, "must be positive"),
        (0 <= config.train.min_learning_rate <= config.train.learning_rate, "train.min_learning_rate", config.train.min_learning_rate, "must be in [0, learning_rate]"),
        (0 <= config.train.seed < 2**32, "train.seed", config.train.seed, "must be in [0, 2**32)"),
        (config.train.epochs <= MAX_EPOCHS, "train.epochs", config.train.epochs, f"must be at most {MAX_EPOCHS}"),
        (0 <= config.train.warmup_epochs < config.train.epochs, "train.warmup_epochs", config.train.warmup_epochs, "must be in [0, epochs)"),
        (config.train.patience >= 1, "train.patience", config.train.patience, "must be positive"),
        (len(config.train.label_weights) == len(LABELS) and all(w > 0 for w in config.train.label_weights),
         "train.label_weights", config.train.label_weights, f"must be {len(LABELS)} positive numbers in the order {LABELS}"),
        (config.train.workers >= 1, "train.workers", config.train.workers, "must be positive"),
        (0 <= config.train.snapshots <= config.train.epochs, "train.snapshots", config.train.snapshots, "must be in [0, epochs]"),
        (config.train.per_study >= 1, "train.per_study", config.train.per_study, "must be positive"),
        (0.0 <= config.train.centre_weight < math.inf, "train.centre_weight", config.train.centre_weight, "must be >= 0 and finite"),
        (config.train.scale_learning_rate >= 0, "train.scale_learning_rate", config.train.scale_learning_rate, "must be 0 (off) or a batch size"),
        (0.0 < config.predict.clip < 0.5, "predict.clip", config.predict.clip, "must be in (0, 0.5)"),
        (config.predict.batch_size >= 1, "predict.batch_size", config.predict.batch_size, "must be positive"),
        (config.sequence.units >= 1, "sequence.units", config.sequence.units, "must be positive"),
        (0.0 <= config.sequence.dropout < 1.0, "sequence.dropout", config.sequence.dropout, "must be in [0, 1)"),
        (1 <= config.sequence.epochs <= MAX_EPOCHS, "sequence.epochs", config.sequence.epochs, f"must be in [1, {MAX_EPOCHS}]"),
        (config.sequence.batch_size >= 1, "sequence.batch_size", config.sequence.batch_size, "must be positive"),
        (config.sequence.learning_rate > 0, "sequence.learning_rate", config.sequence.learning_rate, "must be positive"),
        (config.sequence.patience >= 1, "sequence.patience", config.sequence.patience, "must be positive"),
        (0.0 <= config.sequence.jitter < 1.0, "sequence.jitter", config.sequence.jitter, "must be in [0, 1)"),
        (0 <= config.sequence.conv <= 15, "sequence.conv", config.sequence.conv, "must be in [0, 15]"),
        (1 <= config.sequence.bags <= 16, "sequence.bags", config.sequence.bags, "must be in [1, 16]"),
        (0.0 <= config.sequence.any_coupling <= 2.0, "sequence.any_coupling", config.sequence.any_coupling, "must be in [0, 2]"),
        (0.0 <= config.sequence.subtype_l2 <= 1.0, "sequence.subtype_l2", config.sequence.subtype_l2, "must be in [0, 1]"),
    ]  # fmt: skip
    train = config.train
    if 1 <= train.epochs <= MAX_EPOCHS and train.warmup_epochs >= train.epochs:
        raise ConfigError(
            f"{source}: `train.epochs` must be more than `train.warmup_epochs`, the warm-up "
            f"epochs that come first. Received: epochs={train.epochs}, "
            f"warmup_epochs={train.warmup_epochs}; lower the warm-up too, e.g. "
            f"--set train.warmup_epochs={max(train.epochs - 1, 0)}"
        )
    for ok, key, value, rule in checks:
        if not ok:
            raise ConfigError(f"{source}: `{key}` {rule}. Received: {key.split('.')[-1]}={value!r}")
    _validate_weights(config.model, source)
    unsupported = device_unsupported(config.augment) if config.augment.device else []
    if unsupported:
        raise ConfigError(
            f"{source}: `augment.device = true` runs the flips, the warp and the level jitter "
            f"as Keras layers, which cannot apply {unsupported}. Received: "
            + ", ".join(f"{k}={getattr(config.augment, k)!r}" for k in unsupported)
            + "; turn those off or set augment.device = false"
        )
    image = config.image
    if image.channels == "neighbours" and (image.context != 1 or len(image.windows) != 1):
        names = ",".join(window_name(w) for w in image.windows)
        raise ConfigError(
            f"{source}: `image.channels = \"neighbours\"` makes slices s-1, s, s+1 the 3 "
            f"channels, so it needs `image.context = 1` and one window. Received: "
            f"context={image.context}, windows={names!r}; set e.g. image.windows = \"brain\""
        )
    try:
        expand_views(config.predict.tta)
    except ViewError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _validate_weights(model: ModelConfig, source: str) -> None:
    """What can be told without the files: a preset goes with the keras_hub backbone.

    Whether a weights file exists is checked when training starts
    (:func:`rsna.preflight.resolve_weights`), so a config names where Kaggle attaches
    its weights and still loads on any machine (``rsna plan``, tests).
    """
    weights, hub = model.weights, model.backbone == HUB
    preset = isinstance(weights, Path) and (weights / PRESET_CONFIG).is_file()
    if hub and (not isinstance(weights, Path) or (weights.exists() and not preset)):
        raise ConfigError(
            f"{source}: `model.backbone`={HUB!r} takes its architecture from a keras-hub preset: "
            f"set `model.weights` to the preset's folder (it holds {PRESET_CONFIG}). "
            f"Received: weights={'' if weights is None else str(weights)!r}"
        )
    if preset and not hub:
        raise ConfigError(
            f"{source}: `model.weights` is a keras-hub preset folder ({weights}); set "
            f'`model.backbone = "{HUB}"` to use it. Received: backbone={model.backbone!r}'
        )


def with_paths(
    config: Config,
    *,
    work_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """A copy of `config` reading from and writing to other folders."""
    data = replace(
        config.data,
        work_dir=Path(work_dir).resolve(),
        out_dir=Path(out_dir).resolve() if out_dir else None,
    )
    return replace(config, data=data)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain TOML-ready values (paths as strings, windows by name)."""
    out: dict[str, Any] = {"name": config.name}
    for name in _SECTIONS:
        table = {}
        for key, value in dataclasses.asdict(getattr(config, name)).items():
            if key == "windows":
                value = [
                    window_name(Window(**w)) if isinstance(w, dict) else window_name(w)
                    for w in value
                ]
            elif isinstance(value, Path):
                value = str(value)
            elif value is None:
                value = ""
            elif isinstance(value, tuple):
                value = list(value)
            table[key] = value
        out[name] = table
    return out


#: Keys that do not change what a fold learns or its OOF file: where files are, how many
#: loader workers, the compiler, and how the test predictions are batched, averaged over
#: folds and clipped. A finished fold's record ignores them, so a
#: later session may move the folders (a read-only work folder, another out_dir).
_NOT_EXPERIMENT = frozenset({"data.work_dir", "data.out_dir", "train.workers", "train.jit_compile", "train.tensorboard", "predict.batch_size", "predict.ensemble", "predict.clip"})  # fmt: skip


def experiment_record(config: Config, *, stage: int) -> dict[str, Any]:
    """What fold training of `stage` depends on, flat as ``{"section.key": value}``.

    Stage 1 depends on the store's codec, the image, model, train and augment sections
    and the TTA views of its OOF prediction; stage 2 also on ``[sequence]``. A weights
    file counts by its name, since Kaggle attaches it under another path each session.
    """
    sections = ["data", "image", "model", "train", "augment", "predict"]
    sections += ["sequence"] if stage == 2 else []
    flat = config_to_dict(config)
    record = {
        f"{section}.{key}": value
        for section in sections
        for key, value in flat[section].items()
        if f"{section}.{key}" not in _NOT_EXPERIMENT
    }
    weights = config.model.weights
    if isinstance(weights, Path):
        record["model.weights"] = weights.name
    return record


def experiment_changes(recorded: Mapping[str, Any], config: Config, *, stage: int) -> list[str]:
    """``key: recorded -> now`` for every key of :func:`experiment_record` that differs."""
    now = experiment_record(config, stage=stage)
    keys = sorted(set(recorded) | set(now))
    missing = "(unset)"
    return [
        f"{key}: {recorded.get(key, missing)!r} -> {now.get(key, missing)!r}"
        for key in keys
        if recorded.get(key, missing) != now.get(key, missing)
    ]


def dump_config(config: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved config as TOML, atomically; :func:`load_config` reads it back."""
    data = config_to_dict(config)
    lines = [f"name = {_toml(data.pop('name'))}", ""]
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        lines.append("")
    return files.write_text(path, "\n".join(lines))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` from the command line; the value is read as TOML if it can be."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ConfigError(f"--set takes section.key=value. Received: {text!r}")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed
