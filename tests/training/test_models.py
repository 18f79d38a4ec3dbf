"""rsna.training.models: input, heads, prior bias, mixed precision, local weights, safe loading."""

from __future__ import annotations

import dataclasses
from unittest import mock

import h5py
import keras
import keras.src.applications.efficientnet as efficientnet
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from rsna.config import ConfigError, config_from_dict
from rsna.training.fold import compile_fold_model
from rsna.training.models import build_model, context_adapter, load_model


def config(*, size: int = 32, **model):
    return config_from_dict(
        {"image": {"size": size, "context": 1}, "model": {"backbone": "small_cnn", **model}}
    )


def test_small_cnn_takes_uint8_and_gives_six_probabilities():
    model = build_model(config())
    assert model.input.dtype == "uint8" and tuple(model.input.shape) == (None, 32, 32, 9)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    p = model.predict(x, verbose=0)
    assert p.shape == (2, 6) and ((p > 0) & (p < 1)).all()
    for name in ("features", "logits", "probabilities"):
        model.get_layer(name)


def test_prior_sets_the_starting_predictions():
    prior = np.array([0.01, 0.05, 0.04, 0.05, 0.06, 0.14])
    model = build_model(config(dropout=0.0), prior=prior)
    dense = model.get_layer("logits")
    dense.set_weights([np.zeros_like(dense.get_weights()[0]), dense.get_weights()[1]])
    p = model.predict(np.zeros((1, 32, 32, 9), np.uint8), verbose=0)
    np.testing.assert_allclose(p[0], prior, rtol=1e-4)


@pytest.mark.parametrize(
    "precision, inner", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")]
)
def test_mixed_precision_keeps_the_head_float32_and_restores_the_policy(precision, inner):
    before = keras.config.dtype_policy().name
    model = build_model(config(precision=precision))
    assert model.get_layer("conv1a").compute_dtype == inner
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == before


def _compiled(precision: str) -> keras.Model:
    return compile_fold_model(
        build_model(config(precision=precision)),
        learning_rate=1e-3,
        label_weights=(1, 1, 1, 1, 1, 2),
        precision=precision,
    )


def test_mixed_bfloat16_trains_an_epoch_on_cpu_with_a_float32_head():
    model = _compiled("mixed_bfloat16")
    rng = np.random.default_rng(7)
    x = rng.integers(0, 255, (16, 32, 32, 9), dtype=np.uint8)
    y = (rng.random((16, 6)) < 0.3).astype("float32")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(x[:2], verbose=0).dtype == np.float32
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_float16_gets_a_loss_scaling_optimizer():
    model = _compiled("mixed_float16")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_keras_applications_backbone_with_a_local_weights_file(tmp_path):
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    model = build_model(config(backbone="MobileNetV2", weights=str(path)))
    model.get_layer("channel_adapter")  # 9 context channels mapped to the 3 the weights expect
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    np.testing.assert_array_equal(inner.get_weights()[0], backbone.get_weights()[0])
    scratch = build_model(config(backbone="MobileNetV2"))
    with pytest.raises(ValueError):
        scratch.get_layer("channel_adapter")  # no weights file: the backbone takes 9 channels


def _imagenet_like_file(tmp_path, *, legacy: bool) -> tuple[keras.Model, str]:
    """A random EfficientNetB0 whose input normalisation holds ImageNet's statistics,
    saved as Keras's own ``*_notop.h5`` (legacy) or as ``.weights.h5``."""
    net = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    norm = next(layer for layer in net.layers if isinstance(layer, keras.layers.Normalization))
    count = norm.get_weights()[2]
    norm.set_weights([np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225]) ** 2, count])
    if legacy:
        path = tmp_path / "efficientnetb0_notop.h5"
        with h5py.File(path, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, net)
    else:
        path = tmp_path / "efficientnetb0.weights.h5"
        net.save_weights(path)
    return net, str(path)


def _layer_graph(model: keras.Model) -> list:
    """Each layer's class and config without its name, in order."""
    graph = []
    for layer in model.layers:
        config = {k: v for k, v in layer.get_config().items() if k != "name"}
        graph.append((type(layer).__name__, repr(config)))
    return graph


@pytest.mark.parametrize("legacy", [True, False])
def test_efficientnet_weights_from_a_file_get_the_imagenet_input_pipeline(tmp_path, legacy):
    _, path = _imagenet_like_file(tmp_path, legacy=legacy)
    # What Keras builds for weights="imagenet", with the download answered by the file.
    with mock.patch.object(efficientnet.file_utils, "get_file", return_value=path):
        reference = keras.applications.EfficientNetB0(
            include_top=False, weights="imagenet", input_shape=(32, 32, 3), pooling="avg"
        )
    model = build_model(config(backbone="EfficientNetB0", weights=path))
    inner = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert _layer_graph(inner) == _layer_graph(reference)
    x = np.random.default_rng(2).integers(0, 255, (2, 32, 32, 3)).astype("float32")
    stem = keras.Model(inner.input, inner.get_layer("stem_conv").output)
    reference_stem = keras.Model(reference.input, reference.get_layer("stem_conv").output)
    np.testing.assert_array_equal(stem.predict(x, verbose=0), reference_stem.predict(x, verbose=0))
    # Without the extra rescaling the stem would see inputs about 2x off (1/sqrt(std)).
    plain = keras.applications.EfficientNetB0(
        include_top=False, weights=path, input_shape=(32, 32, 3), pooling="avg"
    )
    plain_stem = keras.Model(plain.input, plain.get_layer("stem_conv").output).predict(x, verbose=0)
    ratio = np.abs(reference_stem.predict(x, verbose=0)).mean() / np.abs(plain_stem).mean()
    assert 2.0 < ratio < 2.2


def test_weights_saved_and_loaded_into_a_fresh_build_predict_the_same(tmp_path):
    def single(**model):
        one = config(backbone="DenseNet121", **model)
        return dataclasses.replace(one, image=dataclasses.replace(one.image, context=0))

    def features(model: keras.Model, x: np.ndarray) -> np.ndarray:
        return keras.Model(model.input, model.get_layer("features").output).predict(x, verbose=0)

    first = build_model(single())
    inner = next(layer for layer in first.layers if isinstance(layer, keras.Model))
    path = str(tmp_path / "densenet.weights.h5")
    inner.save_weights(path)
    x = np.random.default_rng(3).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    centre = x[..., 3:6]
    np.testing.assert_array_equal(
        features(build_model(single(weights=path)), centre), features(first, centre)
    )
    # With context the adapter passes the centre slice's windows: the same features.
    context = build_model(config(backbone="DenseNet121", weights=path))
    np.testing.assert_allclose(features(context, x), features(first, centre), rtol=1e-5, atol=1e-6)


def test_the_context_adapter_starts_as_the_centre_slices_windows():
    x = keras.Input((4, 4, 9))
    adapter = keras.Model(x, context_adapter(x, windows=3, context=1))
    image = np.random.default_rng(4).random((1, 4, 4, 9)).astype("float32")
    np.testing.assert_array_equal(adapter.predict(image, verbose=0), image[..., 3:6])
    x = keras.Input((4, 4, 5))  # one window, two slices each side: grey copied to RGB
    adapter = keras.Model(x, context_adapter(x, windows=1, context=2))
    image = np.random.default_rng(5).random((1, 4, 4, 5)).astype("float32")
    np.testing.assert_array_equal(adapter.predict(image, verbose=0), image[..., [2, 2, 2]])


def test_imagenet_offline_names_the_local_file_route(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")  # what Keras raises offline

    monkeypatch.setattr(efficientnet.file_utils, "get_file", offline)
    with pytest.raises(ConfigError, match="set `model.weights` to its path"):
        build_model(config(backbone="EfficientNetB0", weights="imagenet"))


def test_an_unbuildable_backbone_is_a_config_error():
    # The backbone table knows InceptionV3 needs at least 75x75: the config refuses it...
    with pytest.raises(ConfigError, match="`image.size` must be >= 75 for InceptionV3"):
        config(backbone="InceptionV3")
    # ...and a config that slipped past the check fails as a ConfigError when built.
    valid = config(backbone="InceptionV3", size=75)
    small = dataclasses.replace(valid, image=dataclasses.replace(valid.image, size=32))
    with pytest.raises(ConfigError, match="`model.backbone`='InceptionV3' cannot be built"):
        build_model(small)


def test_saved_model_loads_in_safe_mode(tmp_path):
    model = build_model(config())
    path = tmp_path / "m.keras"
    model.save(path)
    x = np.random.default_rng(1).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    np.testing.assert_allclose(
        load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )


@pytest.fixture(scope="module")
def hub_preset(tmp_path_factory):
    """A small keras-hub ResNet saved as a preset folder with an ImageNet image converter,
    as Kaggle Models attach them; nothing is downloaded."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(None, None, 3),
    )
    std, mean = np.array([0.229, 0.224, 0.225]), np.array([0.485, 0.456, 0.406])
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(32, 32), scale=(1 / (255 * std)).tolist(), offset=(-mean / std).tolist()
    )
    folder = tmp_path_factory.mktemp("hub") / "resnet_tiny"
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder, backbone, mean, std


def test_a_keras_hub_preset_gets_its_converters_scaling_and_its_weights(hub_preset, tmp_path):
    folder, backbone, mean, std = hub_preset
    model = build_model(config(backbone="keras_hub", weights=str(folder)))
    x = np.random.default_rng(6).integers(0, 255, (2, 32, 32, 9), dtype=np.uint8)
    features = keras.Model(model.input, model.get_layer("features").output).predict(x, verbose=0)
    # By hand: the centre slice's windows (the adapter's start), ImageNet-normalised.
    centre = (x[..., 3:6].astype("float64") / 255.0 - mean) / std
    expected = backbone.predict(centre.astype("float32"), verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "m.keras")  # loads back in safe mode, keras-hub classes and all
    np.testing.assert_allclose(
        load_model(tmp_path / "m.keras").predict(x, verbose=0),
        model.predict(x, verbose=0),
        rtol=1e-6,
    )


def test_a_preset_folder_and_the_keras_hub_backbone_go_together(hub_preset, tmp_path):
    folder = hub_preset[0]
    with pytest.raises(ConfigError, match="`model.backbone`='keras_hub' takes its architecture"):
        config(backbone="keras_hub")
    with pytest.raises(ConfigError, match='set `model.backbone = "keras_hub"` to use it'):
        config(backbone="EfficientNetB0", weights=str(folder))
    with pytest.raises(ConfigError, match="it holds config.json\\). Received: weights='/"):
        config(backbone="keras_hub", weights=str(tmp_path))  # a folder that is no preset


def test_a_zip_bomb_is_refused_before_it_is_extracted(tmp_path):
    """A 1 MB archive whose weights member inflates to 256 MiB (the 'model.weights.h5' of
    zeros) is refused from its header alone; nothing is inflated."""
    import tracemalloc
    import zipfile

    from rsna.training.models import ModelFileError

    bomb = tmp_path / "best.keras"
    chunk = bytes(2**20)
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        with archive.open("model.weights.h5", "w", force_zip64=True) as member:
            for _ in range(256):
                member.write(chunk)
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="member model.weights.h5 inflates from .* refused as a zip bomb"):
        load_model(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20


def test_an_archive_past_the_size_bound_is_refused(tmp_path):
    from rsna.training.models import ModelFileError

    path = tmp_path / "m.keras"
    build_model(config()).save(path)
    with mock.patch("rsna.training.models.MAX_MODEL_BYTES", 1000):
        with pytest.raises(ModelFileError, match="inflates to .* more than MAX_MODEL_BYTES=1,000"):
            load_model(path)
    assert load_model(path).output_shape == (None, 6)


def test_a_foreign_model_says_what_was_expected(tmp_path):
    from rsna.training.models import ModelFileError, check_slice_model

    model = build_model(config(weights="random"))
    check_slice_model(model, config(), path="best.keras")  # its own config: fine
    with pytest.raises(ModelFileError, match=r"input \(32, 32, 9\) where the config gives \(64, 64, 9\)"):
        check_slice_model(model, config(size=64), path="best.keras")
    inputs = keras.Input((32, 32, 9))
    three = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    with pytest.raises(ModelFileError, match="output .* where 6 probabilities are expected.*no `features` and `logits`"):
        check_slice_model(three, config(), path="best.keras")


def test_weight_decay_spares_biases_norms_and_the_context_adapter(tmp_path):
    """With zero gradients Adam's step is zero, so one step leaves exactly the decay:
    ``w * (1 - lr * WEIGHT_DECAY)`` on the decayed variables, nothing on the others."""
    from rsna.training.fold import WEIGHT_DECAY

    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    model = build_model(config(backbone="MobileNetV2", weights=str(path)))
    model = compile_fold_model(model, learning_rate=1.0, label_weights=(1, 1, 1, 1, 1, 2))
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.optimizer.apply_gradients(
        [(keras.ops.zeros_like(v), v) for v in model.trainable_variables]
    )
    decayed = set()
    for v, old in zip(model.trainable_variables, before, strict=True):
        if not np.array_equal(v.numpy(), old):
            np.testing.assert_allclose(v.numpy(), old * (1 - WEIGHT_DECAY), rtol=1e-6)
            decayed.add(v.path)
    kernels = {v.path for v in model.trainable_variables if len(v.shape) >= 2}
    assert decayed == kernels - {"channel_adapter/kernel"}
    assert "channel_adapter/kernel" in kernels and len(decayed) > 50


def test_neighbour_channels_feed_a_pretrained_stem_without_an_adapter(tmp_path):
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    path = tmp_path / "mobilenet.weights.h5"
    backbone.save_weights(path)
    neighbours = {"size": 32, "context": 1, "windows": "brain", "channels": "neighbours"}
    model = build_model(
        config_from_dict(
            {"image": neighbours, "model": {"backbone": "MobileNetV2", "weights": str(path)}}
        )
    )
    assert tuple(model.input.shape) == (None, 32, 32, 3)
    with pytest.raises(ValueError):
        model.get_layer("channel_adapter")
    with pytest.raises(ConfigError, match="needs `image.context = 1` and one window"):
        config_from_dict({"image": {"context": 2, "windows": "brain", "channels": "neighbours"}})


def _device_config(**augment):
    return config_from_dict(
        {
            "image": {"size": 32, "context": 0},
            "model": {"backbone": "small_cnn", "dropout": 0.0},
            "augment": {"device": True, "brightness": 0.1, "contrast": 0.1, **augment},
            "train": {"seed": 7},
        }
    )


def _augmented(model: keras.Model) -> keras.Model:
    """The model from its input to the last device-side augmentation layer."""
    last = [layer for layer in model.layers if layer.name.startswith("random_")][-1]
    return keras.Model(model.input, last.output)


def test_device_augmentation_is_off_at_inference_and_seeded_in_training(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    model = build_model(_device_config())
    model.save(tmp_path / "device.keras")  # the layers are Keras's own: safe mode loads them
    loaded = load_model(tmp_path / "device.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    names = [layer.name for layer in model.layers if layer.name.startswith("random_")]
    assert len(names) == 6  # flip, translation, zoom, rotation, brightness, contrast
    part = _augmented(model)
    np.testing.assert_allclose(part(x, training=False), x / 255.0, rtol=1e-6)
    moved = np.asarray(part(x, training=True))
    assert not np.allclose(moved, x / 255.0)
    assert moved.min() >= 0.0 and moved.max() <= 1.0 + 1e-6
    again = np.asarray(_augmented(build_model(_device_config()))(x, training=True))
    np.testing.assert_allclose(again, moved, rtol=1e-6)  # the same seed, the same draws
    plain = build_model(
        config_from_dict({"image": {"size": 32, "context": 0}, "model": {"backbone": "small_cnn"}})
    )
    assert not any(layer.name.startswith("random_") for layer in plain.layers)


def test_device_augmentation_refuses_what_only_the_cpu_can_do():
    with pytest.raises(ConfigError, match="cannot apply \\['erase', 'zflip'\\]"):
        _device_config(erase=0.5, zflip=0.5)
