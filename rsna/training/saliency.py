"""Where a slice model looks: SmoothGrad-squared saliency per label, and ``rsna explain``.

SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) takes the gradient of a label's logit
with respect to the input on noisy copies of the image; SmoothGrad-squared averages the
squared gradients (over the copies and the channels), the variant that localised best in
Hooker et al.'s benchmark (NeurIPS 2019, arXiv:1806.10758). On the demo's trained model
the ``any`` map puts a median 35x the bleed's share of the head inside the planted bleed
(13x the least, 12 slices; absolute gradients: 9x), which a slow test checks with a
margin. It is chosen over Grad-CAM because it
needs nothing of the architecture: Grad-CAM needs the last convolution's map, which a
nested ``keras.applications`` or keras-hub backbone hides, and at 7x7 (EfficientNetB0
at 224 px) it is too coarse for a bleed a few pixels thick. The gradient is taken from
the model's ``to_unit`` layer (the uint8 input scaled to [0, 1]), so every backbone and
context setting works unchanged.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from rsna import files, runs
from rsna.config import Config
from rsna.data.labels import LABELS
from rsna.errors import RsnaError

__all__ = [
    "EXPLAIN",
    "ExplainError",
    "any_saliency",
    "explain_image",
    "model_input",
    "saliency",
    "saliency_mass",
]

#: The run's folder of saliency figures.
EXPLAIN = "explain"


class ExplainError(RsnaError):
    """No model to explain with, or an image that is not in the work folder."""


def _unit_to_logits(model: keras.Model) -> keras.Model:
    """The model from its scaled input (``to_unit``) to its logits."""
    return keras.Model(model.get_layer("to_unit").output, model.get_layer("logits").output)


def saliency(
    model: keras.Model,
    image: np.ndarray,
    *,
    samples: int = 16,
    noise: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """SmoothGrad-squared maps (6, H, W) of one uint8 (H, W, C) image, one per label in LABELS,
    each scaled to sum to 1 (all zero if the gradient is). `noise` is the Gaussian sd
    on the [0, 1] input; the noise is drawn from `seed`.

    Raises:
        ExplainError: `samples` < 1 or `noise` < 0.
    """
    if samples < 1 or noise < 0:
        raise ExplainError(
            f"`samples` must be positive and `noise` non-negative. Received: samples={samples}, "
            f"noise={noise}"
        )
    net = _unit_to_logits(model)
    rng = np.random.default_rng(seed)
    x = np.asarray(image, np.float32)[None] / 255.0
    batch = x + rng.normal(0.0, noise, (samples, *x.shape[1:])).astype(np.float32)
    total = np.zeros((len(LABELS), *x.shape[1:3]), np.float64)
    tensor = tf.constant(batch)
    for j in range(len(LABELS)):
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            logit = net(tensor, training=False)[:, j]
        grad = tape.gradient(logit, tensor).numpy()
        total[j] = np.square(grad).mean(axis=(0, 3))
    sums = total.sum(axis=(1, 2), keepdims=True)
    return np.divide(total, sums, out=np.zeros_like(total), where=sums > 0).astype(np.float32)


def saliency_mass(maps: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The share of each map's saliency inside `region` (a bool (H, W) mask)."""
    return (maps * region[None]).sum(axis=(1, 2)) / np.maximum(maps.sum(axis=(1, 2)), 1e-12)


def _fold_of(config: Config, image_id: str, fold: int | None) -> tuple[int, Path, str]:
    """The fold explaining `image_id` (given, or the one that did not train on it, or the
    first for a test image), its model file, and what the image is to that model."""
    from rsna.training.fold import config_folds
    from rsna.training.stage1 import fold_models

    models, folds = fold_models(config), config_folds(config)
    if fold is None:
        fold = int(folds[image_id]) if image_id in folds.index else next(iter(models))
    if fold not in models:
        raise ExplainError(f"`fold` {fold} has no {runs.BEST_MODEL}; trained: {sorted(models)}")
    if image_id not in folds.index:
        return fold, models[fold], "a test image"
    trained = int(folds[image_id]) != fold
    return fold, models[fold], "trained on" if trained else "out of fold"


def model_input(config: Config, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 input of `image_id` as the model sees it (every context slice's windows)
    and its centre slice's windows, for display.

    Raises:
        ExplainError: the image is not in the work folder.
    """
    from rsna.data.metadata import read_metadata
    from rsna.training.generator import DataGenerator

    if image_id not in read_metadata(config.data.work_dir).index:
        raise ExplainError(
            f"`image` {image_id!r} is not in {config.data.work_dir}/metadata.parquet"
        )
    image = DataGenerator.from_config(config, [image_id], batch_size=1, to_fit=False)[0][0]
    windows, context = len(config.image.windows), config.image.context
    return image, image[..., context * windows : (context + 1) * windows]


def any_saliency(config: Config, image_ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image ID -> (its centre slice, its ``any`` map), each from the fold model that did
    not train on it (the first fold for a test image)."""
    from rsna.training.models import load_model

    loaded: dict[Path, keras.Model] = {}
    found = {}
    for image_id in image_ids:
        _, path, _ = _fold_of(config, image_id, None)
        model = loaded.get(path) or loaded.setdefault(path, load_model(path))
        image, centre = model_input(config, image_id)
        maps = saliency(model, image, seed=config.train.seed)
        found[image_id] = (centre, maps[LABELS.index("any")])
    return found


def explain_image(
    config: Config, image_id: str, *, fold: int | None = None, out: str | Path | None = None
) -> Path:
    """Draw `image_id` with each label's saliency from fold `fold`'s ``best.keras`` (by
    default the fold that did not train on it, or the first fold for a test image), and
    write the PNG to `out` (default ``RUN/explain/<image>.png``). Returns its path.

    Raises:
        ExplainError: no such fold model, or the image is not in the work folder.
        rsna.predictions.PredictError: no trained fold.
    """
    from rsna.plots import plot_saliency
    from rsna.training.models import load_model

    fold, path, where = _fold_of(config, image_id, fold)
    image, centre = model_input(config, image_id)
    model = load_model(path)
    maps = saliency(model, image, seed=config.train.seed)
    probabilities = model.predict(image[None], verbose=0)[0]
    figure = plot_saliency(centre, maps, probabilities, title=f"{image_id}, fold {fold} ({where})")
    target = Path(out) if out else config.run_dir / EXPLAIN / f"{image_id}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    return files.save_figure(figure, target)
