"""rsna.training.precision: the auto rule in closed form, the deprecated key, the run's record."""

from __future__ import annotations

import pytest

from rsna.config import ConfigError, config_from_dict
from rsna.training.precision import Device, local_devices, precision_for, resolve_precision

T4, A100, P100, V100 = (Device("GPU", c) for c in ((7, 5), (8, 0), (6, 0), (7, 0)))


@pytest.mark.parametrize(
    "devices, expected",
    [
        ([Device("TPU")], "mixed_bfloat16"),
        ([A100], "mixed_bfloat16"),
        ([Device("GPU", (8, 9))], "mixed_bfloat16"),  # L4
        ([T4, T4], "mixed_float16"),  # Kaggle's 2xT4
        ([V100], "mixed_float16"),
        ([P100], "float32"),  # no tensor cores
        ([A100, T4], "mixed_float16"),  # the weakest decides
        ([Device("CPU")], "float32"),
        ([], "float32"),
        ([Device("GPU")], "float32"),  # capability unknown: the safe choice
    ],
)
def test_auto_precision_by_device(devices, expected):
    assert precision_for(devices)[0] == expected


def test_resolving_names_the_reason_and_keeps_an_explicit_choice():
    auto = config_from_dict({})
    resolved, line = resolve_precision(auto, devices=[T4, T4])
    assert resolved.model.precision == "mixed_float16"
    assert line == "precision: mixed_float16 (auto: GPU compute capability 7.5)"
    explicit = config_from_dict({"model": {"precision": "float32"}})
    assert resolve_precision(explicit, devices=[A100]) == (
        explicit,
        "precision: float32 (model.precision)",
    )
    # This machine, as the tests run: CPU only, so float32.
    assert resolve_precision(auto)[0].model.precision == precision_for(local_devices())[0]


def test_the_old_mixed_precision_key_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`model.mixed_precision` is deprecated"):
        old = config_from_dict({"model": {"mixed_precision": True}})
    assert old.model.precision == "mixed_float16" and not old.model.mixed_precision
    with pytest.warns(DeprecationWarning, match="precision='float32' is set and wins"):
        both = config_from_dict({"model": {"mixed_precision": True, "precision": "float32"}})
    assert both.model.precision == "float32"


def test_jit_compile_takes_auto_or_a_boolean():
    assert config_from_dict({}).train.jit_compile == "auto"
    assert config_from_dict({"train": {"jit_compile": False}}).train.jit_compile is False
    with pytest.raises(ConfigError, match="jit_compile"):
        config_from_dict({"train": {"jit_compile": "sometimes"}})
