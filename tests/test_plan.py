"""rsna.plan: the budget of a config, by hand and in totals."""

from __future__ import annotations

import pytest

from harness import tiny_experiment
from rsna.cli import main
from rsna.config import load_config
from rsna.plan import (
    FULL_TEST,
    FULL_TRAIN,
    GPUS,
    LOADER,
    REAL_SLICE_KB,
    PlanError,
    format_plan,
    hardware,
    loader_rate,
    plan_run,
    store_kb,
)


def test_the_full_competition_lists_every_file_kind_and_totals_are_sums():
    plan = plan_run(load_config("baseline"), machine=hardware("t4x2"))
    assert (plan.train_images, plan.test_images) == (FULL_TRAIN, FULL_TEST)
    kinds = " | ".join(item.what for item in plan.items)
    for kind in ("metadata", "store", "train 5 folds", "validate", "OOF", "best.keras", "backup/", "test:", "embed", "series model", "submission"):  # fmt: skip
        assert kind in kinds, kind
    kept = sum(i.gb for i in plan.items if not i.transient)
    assert plan.disk_gb == pytest.approx(kept + max(i.gb for i in plan.items if i.transient))
    assert plan.hours == pytest.approx(sum(i.hours for i in plan.items if not i.cpu))
    assert plan.cpu_hours == pytest.approx(sum(i.hours for i in plan.items if i.cpu))
    # the baseline is built to fit a Kaggle notebook and a week of quota with a margin
    machine = plan.hardware
    assert plan.disk_gb < 0.8 * machine.disk_gb and plan.hours < 0.5 * machine.weekly_hours


def test_a_hand_computed_plan():
    """EfficientNetB0 at 224 on one T4 is the anchor itself: 868 x 320/900 img/s."""
    config = tiny_experiment(
        "w", "o", name="hand", image={"size": 224}, model={"backbone": "EfficientNetB0"},
        train={"epochs": 2}, predict={"tta": ["none", "hflip"]},
    )  # fmt: skip
    plan = plan_run(config, machine=hardware("t4"), slices=1000, n_folds=5, stage2=False)
    train = round(1000 * FULL_TRAIN / (FULL_TRAIN + FULL_TEST))  # 861
    assert (plan.train_images, plan.test_images) == (861, 139) and train == 861
    speed = 868 * 320 / 900
    assert plan.rate == pytest.approx(speed)
    by = {item.what.split(" ")[0]: item for item in plan.items}
    assert by["train"].hours == pytest.approx(5 * 2 * (861 * 4 / 5) / speed / 3600)
    assert by["validate"].hours == pytest.approx(5 * 2 * (861 / 5) / (3 * speed) / 3600)
    assert by["test:"].hours == pytest.approx(5 * 139 * 2 / (3 * speed) / 3600)
    assert by["best.keras"].gb == pytest.approx(5 * 4_049_571 * 4 / 1e9)
    # lossless, no crop, 224 px from the table's 256: scaled by area
    assert store_kb(config)[0] == pytest.approx(REAL_SLICE_KB[(256, "none", "lossless")] * (224 / 256) ** 2)


def test_a_built_store_is_measured_not_projected(tiny_work, tmp_path):
    config = tiny_experiment(tiny_work, tmp_path, name="m")
    kb, how = store_kb(config)
    assert how.startswith("measured:") and 0 < kb < 32 * 32 * 3 / 1000


def test_hardware_names_and_their_limits():
    kaggle = hardware("t4x2")
    assert (kaggle.count, kaggle.disk_gb, kaggle.session_hours, kaggle.weekly_hours) == (2, 20, 12, 30)
    assert hardware("p100").disk_gb == 20 and hardware("v100x4").disk_gb is None
    assert hardware("A100x8").gpu is GPUS["a100"] and hardware("a100x8").count == 8
    for bad in ("h100", "t4x0", "t4x", "x2", ""):
        with pytest.raises(PlanError, match="`gpus` must be one of"):
            hardware(bad)


def test_a_backbone_without_a_published_cost_needs_a_measured_rate():
    demo = load_config("demo")
    with pytest.raises(PlanError, match="small_cnn has no published compute.*--rate"):
        plan_run(demo, machine=hardware("t4"))
    plan = plan_run(demo, machine=hardware("t4x2"), rate=100.0)
    assert plan.rate == 200.0 and "given: 100 img/s a device" in plan.rate_source


def test_features_cost_disk_only_when_stage_2_reads_them():
    logits = plan_run(load_config("baseline"), machine=hardware("t4x2"))
    features = plan_run(
        load_config("baseline", overrides={"sequence.inputs": ["logits", "features"]}),
        machine=hardware("t4x2"),
    )
    embed = [next(i.gb for i in p.items if i.what.startswith("embed")) for p in (logits, features)]
    # 5 folds x (150,561 OOF + 121,232 test) images x 2 x 1,280 features: about 3.5 GB more
    assert embed[1] - embed[0] == pytest.approx(5 * (FULL_TRAIN / 5 + FULL_TEST) * 2560 / 1e9)


def test_the_cli_prints_the_plan_and_its_verdicts(capsys):
    assert main(["plan", "baseline", "--gpus", "t4x2"]) == 0
    out = capsys.readouterr().out
    assert "plan for baseline on 2x T4" in out and "disk: " in out and "fits" in out
    assert "quota: " in out and "Tan & Le 2019" in out
    assert main(["plan", "strong", "--gpus", "t4x2"]) == 0
    assert "DOES NOT FIT" in capsys.readouterr().out  # the strong store is for a bigger disk
    assert main(["plan", "demo"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["plan", "baseline", "--gpus", "h100"]) == 2


def test_the_loaders_rate_follows_context_size_cores_and_store():
    one = LOADER["per_core"][("lossy", 1)]
    assert loader_rate(compression="lossy", context=1, size=256, cores=1) == one
    assert loader_rate(compression="lossy", context=1, size=512, cores=4) == pytest.approx(one)
    assert loader_rate(compression="lossy", context=2, size=256, cores=5) == pytest.approx(3 * one)
    assert loader_rate(compression="lossy", context=0, size=256, cores=1) == LOADER["per_core"][("lossy", 0)]
    assert loader_rate(compression="none", context=1, size=256, cores=1) == LOADER["per_core"][("lossless", 1)]
    assert all(rate > 0 for rate in LOADER["per_core"].values())


def test_the_feeding_verdict_names_the_workers_to_set():
    """8 A100s take far more than one loader thread gives: the plan says how many."""
    config = load_config("baseline")
    machine = hardware("a100x8")
    plan = plan_run(config, machine=machine)
    text = format_plan(plan)
    one = loader_rate(compression="lossy", context=1, size=256, cores=1)
    needed = -(-plan.rate // one)
    assert f"train.workers = {config.train.workers} gives {one:,.0f}" in text
    assert f"too few: set train.workers = {needed:.0f}" in text
    assert "context 1" in text and "feeding on 4 / 16 / 64 cores" in text
    kaggle = format_plan(plan_run(config, machine=hardware("t4x2")))
    assert ": enough" in kaggle or "too few" in kaggle


def test_study_sampling_and_views_change_the_counted_work():
    """An epoch of study sampling fits per_study / SERIES_SLICES of the images; each
    TTA view is one more forward pass, random_crop:N counting N."""
    from rsna.plan import SERIES_SLICES

    def hours(**sections):
        config = tiny_experiment("w", "o", name="s", image={"size": 224}, model={"backbone": "EfficientNetB0"}, **sections)  # fmt: skip
        plan = plan_run(config, machine=hardware("t4"), slices=10_000, n_folds=5, stage2=False)
        return {item.what.split(" ")[0]: item.hours for item in plan.items}

    every, study = hours(), hours(train={"sampling": "study", "per_study": 4})
    assert study["train"] == pytest.approx(every["train"] * 4 / SERIES_SLICES)
    assert study["validate"] == pytest.approx(every["validate"])  # every slice still
    one = hours(predict={"tta": ["none"]})
    many = hours(predict={"tta": ["none", "hflip", "random_crop:8"]})
    assert many["test:"] == pytest.approx(10 * one["test:"])
