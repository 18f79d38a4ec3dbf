"""``rsna demo``: the whole path on a synthetic competition, with ``configs/demo.toml``.

synth -> prepare -> folds -> preprocess -> stage 1 (train every fold, evaluate, predict,
smooth along z)
-> stage 2 (embed, train the series model of every fold, compare, predict) -> two
submissions, all under one folder::

    OUT/data/    the synthetic competition (kept between runs)
    OUT/work/    metadata, labels, folds, the cache, and runs/demo/ with the models,
                 OOF predictions, CV report, plots and submission.csv; runs/demo/smoothed/
                 stage 1 smoothed along z (rsna postprocess); runs/demo/stage2/
                 with the series models, their OOF predictions and submission.csv

Every stage reuses what a previous run finished. The submission is also scored against
the synthetic competition's hidden test labels, which a real competition would not give.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd

from rsna import runs
from rsna.config import Config, load_config, with_paths
from rsna.errors import DataWarning

__all__ = ["DEMO_PATIENTS", "DEMO_SLICES", "demo_config", "run_demo"]

DEMO_PATIENTS = 64
#: Patients of the demo's synthetic CQ500 (one study each), an external set with known truth.
DEMO_CQ500_PATIENTS = 24
DEMO_SLICES = 28  # typical slices per series (23-33): real series are longer, the demo's CPU budget is 240 s


def demo_config(out: str | Path, *, overrides: dict | None = None) -> Config:
    """The shipped demo config (with `overrides`), reading and writing under `out`."""
    return with_paths(load_config("demo", overrides=overrides), work_dir=Path(out) / "work")


def run_demo(
    out: str | Path = "demo",
    *,
    seed: int = 0,
    workers: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Run every stage; print the CV score against the prior and where the submission is."""
    from rsna.data.cache import build_cache
    from rsna.data.folds import FOLDS_FILE, make_folds, write_folds
    from rsna.data.metadata import prepare
    from rsna.data.synthetic import TEST_LABELS, SynthConfig, make_competition

    out = Path(out)
    config = demo_config(out, overrides=overrides)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        timings[stage] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        print(f"[demo] {stage} done in {timings[stage]} s", flush=True)

    data = out / "data"
    if not (data / "stage_2_train.csv").exists():
        synth = SynthConfig(
            patients=DEMO_PATIENTS, studies=2, slices=DEMO_SLICES, size=config.image.size, seed=seed
        )
        make_competition(data, synth, workers=workers)
    lap("synth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the planted quirks; the report lists them
        prepared = prepare(data, config.data.work_dir, workers=workers)
    print(
        f"[demo] prepare report: {config.data.work_dir / 'prepare_report.md'} "
        f"({len(prepared.report['unreadable'])} unreadable, {len(prepared.report['bad_intercept_fixed'])} bad-intercept files fixed)"
    )
    lap("prepare")
    if not (config.data.work_dir / FOLDS_FILE).exists():
        folds = make_folds(prepared.metadata, prepared.labels, n_folds=3, seed=seed)
        write_folds(folds, prepared.metadata, config.data.work_dir / FOLDS_FILE)
    lap("folds")
    store = build_cache(config.data.work_dir, config.image.spec, codec=config.codec, workers=workers)
    lap("preprocess")
    from rsna.intensity import intensity_baseline

    reference = intensity_baseline(config.data.work_dir, store.path)
    lap("intensity baseline")

    from rsna.evaluate import compare_stages, evaluate, format_scores, format_stages
    from rsna.smooth import smooth_stage
    from rsna.submission import validate_submission
    from rsna.training import runner

    sample = data / "stage_2_sample_submission.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        runner.train(config, "all", verbose=0)
        lap("train stage 1")
        evaluation = evaluate(config.run_dir, config.data.work_dir, baseline=reference.slice)
        print(format_scores(evaluation.scores))
        first = runner.predict(config)
        validate_submission(first.submission, sample)
        lap("predict stage 1")
        smoothed = smooth_stage(config.run_dir, config.data.work_dir, clip=config.predict.clip)
        validate_submission(smoothed.folder / runs.SUBMISSION, sample)
        lap("smooth stage 1")
        runner.train(config, "all", stage=2, verbose=0)
        lap("train stage 2")
        both = compare_stages(
            config.run_dir, config.data.work_dir, evaluation, baseline=reference.neighbours
        )
        print(format_stages(both))
        second = runner.predict(config, stage=2)
        validate_submission(second.submission, sample)
        lap("predict stage 2")
        external = _external(config, out, seed=seed, workers=workers)
        lap("external (synthetic CQ500)")
    truth = data / TEST_LABELS
    test_scores = {
        "stage 1": _score_against_truth(first.predictions, truth),
        "stage 1 smoothed": _score_against_truth(smoothed.test, truth),
        "stage 2": _score_against_truth(second.predictions, truth),
    }
    report = evaluation.report
    weighted = both.loc["weighted"]
    print(
        f"[demo] stage 1: CV weighted log loss {weighted['stage 1']:.4f} vs prior {weighted['prior']:.4f} "
        f"(ratio {report['ratio_to_prior']:.2f}), {report['ratio_to_baseline']:.2f} x the intensity "
        f"baseline's {report['baseline_weighted_log_loss']:.4f}; synthetic test score {test_scores['stage 1']:.4f}"
    )
    print(
        f"[demo] stage 2: CV weighted log loss {weighted['stage 2']:.4f} "
        f"({weighted['stage 2 / stage 1']:.2f} x stage 1, {weighted['stage 2 / smoothed']:.2f} x stage 1 smoothed along z), {weighted['stage 2 / baseline']:.2f} x the "
        f"baseline with neighbours' {weighted['baseline with neighbours']:.4f}; synthetic test score {test_scores['stage 2']:.4f}"
    )
    scores = external.scores.loc["any"]
    print(
        f"[demo] external, a synthetic CQ500 of {external.report['patients']} patients: any AUC "
        f"{scores['auc']:.3f} (95% CI {scores['auc_low']:.3f}-{scores['auc_high']:.3f}), "
        f"sensitivity {scores['sensitivity']:.2f}, specificity {scores['specificity']:.2f} at the "
        f"OOF threshold {scores['threshold']:.3f} ({out / 'external'})"
    )
    print(f"[demo] submissions: {first.submission} (stage 1), {second.submission} (stage 2)")
    print(f"[demo] total {sum(timings.values()):.0f} s: {timings}")
    return {
        "evaluation": report,
        "stages": both,
        "test_scores": test_scores,
        "external": external.scores,
        "submissions": {"stage 1": str(first.submission), "stage 2": str(second.submission)},
        "timings": timings,
    }


def _external(config: Config, out: Path, *, seed: int, workers: int | None):
    """Both stages' run scored on a synthetic CQ500 of new patients (made once)."""
    from rsna.data.cq500 import READS_CSV, make_cq500
    from rsna.data.synthetic import SynthConfig
    from rsna.training.external import evaluate_cq500

    folder = out / "cq500"
    if not (folder / READS_CSV).exists():
        synth = SynthConfig(
            patients=DEMO_CQ500_PATIENTS, studies=1, slices=DEMO_SLICES,
            size=config.image.size, seed=seed + 1000,  # other patients than the competition's
        )  # fmt: skip
        make_cq500(folder, synth, workers=workers)
    return evaluate_cq500(config, folder, out / "external", seed=seed, workers=workers)


def _score_against_truth(predictions: pd.DataFrame, truth_csv: Path) -> float:
    from rsna.data.labels import read_labels
    from rsna.metrics import weighted_log_loss

    truth = read_labels(truth_csv)
    return weighted_log_loss(truth, predictions.loc[truth.index])
