"""``rsna demo``: the whole path on a synthetic competition, with ``configs/demo.toml``.

synth -> prepare -> folds -> preprocess -> train every fold -> evaluate -> predict ->
submission, all under one folder::

    OUT/data/    the synthetic competition (kept between runs)
    OUT/work/    metadata, labels, folds, the cache, and runs/demo/ with the models,
                 OOF predictions, CV report, plots and submission.csv

Every stage reuses what a previous run finished. The submission is also scored against
the synthetic competition's hidden test labels, which a real competition would not give.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pandas as pd

from rsna.config import Config, packaged_config
from rsna.errors import DataWarning

DEMO_PATIENTS = 40


def demo_config(out: str | Path) -> Config:
    """The packaged demo config, reading and writing under `out`."""
    return packaged_config("demo", work_dir=Path(out) / "work")


def run_demo(out: str | Path = "demo", *, seed: int = 0, workers: int | None = None) -> dict:
    """Run every stage; print the CV score against the prior and where the submission is."""
    from rsna.cache import build_cache
    from rsna.folds import FOLDS_FILE, make_folds, write_folds
    from rsna.metadata import prepare
    from rsna.synthetic import TEST_LABELS, SynthConfig, make_competition

    out = Path(out)
    config = demo_config(out)
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
            patients=DEMO_PATIENTS, studies=2, slices=16, size=config.image.size, seed=seed
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
    from rsna.predict import cache_spec

    build_cache(config.data.work_dir, cache_spec(config), workers=workers)
    lap("preprocess")

    from rsna.predict import predict_test
    from rsna.submission import validate_submission
    from rsna.train import evaluate, format_scores, train_folds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        train_folds(config, "all", verbose=0)
        lap("train")
        evaluation = evaluate(config.run_dir, config.data.work_dir)
        print(format_scores(evaluation.scores))
        lap("evaluate")
        result = predict_test(config)
    validate_submission(result.submission, data / "stage_2_sample_submission.csv")
    lap("predict")
    test_score = _score_against_truth(result.predictions, data / TEST_LABELS)
    report = evaluation.report
    print(
        f"[demo] CV weighted log loss {report['weighted_log_loss']:.4f} vs prior {report['prior_weighted_log_loss']:.4f} "
        f"(ratio {report['ratio_to_prior']:.2f}); synthetic test score {test_score:.4f}"
    )
    print(f"[demo] submission: {result.submission}")
    print(f"[demo] total {sum(timings.values()):.0f} s: {timings}")
    return {
        "evaluation": report,
        "test_score": test_score,
        "submission": str(result.submission),
        "timings": timings,
    }


def _score_against_truth(predictions: pd.DataFrame, truth_csv: Path) -> float:
    from rsna.labels import read_labels
    from rsna.metrics import weighted_log_loss

    truth = read_labels(truth_csv)
    return weighted_log_loss(truth, predictions.loc[truth.index])
