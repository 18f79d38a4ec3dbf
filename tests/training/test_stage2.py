"""Stage 2 (embeddings, series inputs, the series model): masking, z order in and image order
out, no leak, resume, the pipeline (slow)."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest
from interrupts import Interrupt, RecordEpochs, StopAfterFirstEpoch
from pydicom.data import get_testdata_file

from harness import tiny_experiment
from rsna.data.folds import read_folds
from rsna.data.labels import LABELS
from rsna.data.metadata import data_dir, read_metadata, read_prepared_labels
from rsna.data.series import build_series, read_embeddings, slice_inputs
from rsna.errors import DataWarning
from rsna.evaluate import evaluate
from rsna.metrics import PRIOR_EPS, logit
from rsna.runs import EMBED_OOF, EMBED_TEST
from rsna.submission import validate_submission
from rsna.training.embed import embed_folds, embed_images
from rsna.training.generator import DataGenerator, SeriesGenerator
from rsna.training.models import SubtypeL2, build_sequence_model, load_model
from rsna.training.runner import train as train_folds
from rsna.training.stage2 import predict_frame
from rsna.training.stage2 import predict_test as predict_sequence_test
from rsna.training.stage2 import train_fold as train_sequence_fold

pytestmark = pytest.mark.slow


def config_for(work, out, **sequence):
    return tiny_experiment(
        work,
        out,
        name="seq",
        image={"context": 0},
        train={"epochs": 1},
        predict={"tta": ["none"]},
        sequence={"units": 8, "epochs": 2, "batch_size": 4, **sequence},
    )


@pytest.fixture(scope="module")
def stage1(tiny_work, tmp_path_factory):
    config = config_for(tiny_work, tmp_path_factory.mktemp("seq-run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        train_folds(config, verbose=0)
        embed_folds(config)
    return config


def test_embeddings_of_an_image_come_only_from_the_model_that_did_not_train_on_it(
    stage1, tiny_work
):
    folds = read_folds(tiny_work / "folds.csv")
    seen = []
    for k in sorted(folds.unique()):
        embedded = read_embeddings(stage1.fold_dir(int(k)) / EMBED_OOF)
        assert sorted(embedded.index) == sorted(
            folds.index[folds == k]
        )  # fold k's own images, no others
        assert embedded.filter(like="logit_").shape[1] == 6
        assert embedded.filter(like="feature_").shape[1] == 0  # logits only: 12 bytes an image
        seen += list(embedded.index)
        test = read_embeddings(stage1.fold_dir(int(k)) / EMBED_TEST)
        assert not set(test.index) & set(folds.index)
    assert sorted(seen) == sorted(folds.index) and len(seen) == len(set(seen))


def test_features_are_embedded_when_stage_2_reads_them(stage1, capsys):
    import dataclasses

    config = dataclasses.replace(
        stage1, sequence=dataclasses.replace(stage1.sequence, inputs=("logits", "features"))
    )
    before = read_embeddings(stage1.fold_dir(0) / EMBED_OOF)
    (written,) = embed_folds(config, [0])
    assert (
        "holds logits only; sequence.inputs asks for features, so it is redone"
        in capsys.readouterr().out
    )
    after = read_embeddings(written[EMBED_OOF])
    assert after.filter(like="feature_").shape[1] > 6
    np.testing.assert_array_equal(after.filter(like="logit_"), before.filter(like="logit_"))
    embed_folds(config, [0])  # now complete: reused, nothing said
    assert "redone" not in capsys.readouterr().out


def test_series_are_in_z_order_and_predictions_come_back_by_image(stage1, tiny_work):
    meta = read_metadata(tiny_work)
    prior = read_prepared_labels(tiny_work)[list(LABELS)].mean().to_numpy()
    frame = slice_inputs(
        read_embeddings(stage1.fold_dir(0) / EMBED_OOF),
        inputs=("logits",),
        prior_logits=logit(prior, eps=PRIOR_EPS),
    )
    series = build_series(frame, meta)
    for ids, values in series.values():
        assert (
            meta.loc[ids, "slice_index"].is_monotonic_increasing
            and meta.loc[ids, "z"].is_monotonic_increasing
        )
        assert values.shape == (len(ids), 18)
        np.testing.assert_allclose(
            values[1:, 6:12], values[1:, :6] - values[:-1, :6], atol=1e-6
        )  # minus previous

    class PassThrough:
        def predict_on_batch(self, batch):
            return batch["slices"][..., :6]

    forward = predict_frame(PassThrough(), SeriesGenerator(series, batch_size=3))
    backward = predict_frame(PassThrough(), SeriesGenerator(series, batch_size=3, reverse=True))
    assert sorted(forward.index) == sorted(frame.index)
    np.testing.assert_allclose(
        forward.loc[frame.index].to_numpy(), frame.iloc[:, :6].to_numpy(), atol=1e-6
    )
    np.testing.assert_allclose(
        backward.loc[frame.index].to_numpy(), frame.iloc[:, :6].to_numpy(), atol=1e-6
    )


@pytest.mark.parametrize("conv, bags, coupling", [(0, 1, 0.0), (5, 1, 0.0), (3, 3, 0.5)])
def test_padded_steps_do_not_change_the_real_steps(stage1, conv, bags, coupling, tmp_path):
    sequence = replace(stage1.sequence, conv=conv, bags=bags, any_coupling=coupling)
    config = replace(stage1, sequence=sequence)
    model = build_sequence_model(config, width=18)
    names = [layer.name for layer in model.layers]
    assert sum(n.startswith("conv") for n in names) == (bags if conv else 0)
    assert sum(n.startswith("bigru") for n in names) == bags
    assert ("any_coupling" in names) == bool(coupling)
    rng = np.random.default_rng(0)
    series = rng.normal(size=(1, 5, 18)).astype("float32")
    start = model.predict({"slices": series, "mask": np.ones((1, 5), "float32")}, verbose=0)
    np.testing.assert_allclose(start, 1 / (1 + np.exp(-series[..., :6])), rtol=1e-5, atol=1e-6)
    for layer in model.layers:  # zero-initialised corrections: stage 1 passes through until trained
        if layer.name.startswith("correction") and layer.get_weights():
            layer.set_weights(
                [rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
            )
    alone = model.predict({"slices": series, "mask": np.ones((1, 5), "float32")}, verbose=0)
    padded = np.concatenate([series, rng.normal(size=(1, 4, 18)).astype("float32") * 100], axis=1)
    mask = np.concatenate([np.ones((1, 5)), np.zeros((1, 4))], axis=1).astype("float32")
    out = model.predict({"slices": padded, "mask": mask}, verbose=0)
    np.testing.assert_allclose(out[:, :5], alone, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.keras")  # and it loads in safe mode, giving the same outputs
    again = load_model(tmp_path / "m.keras").predict({"slices": padded, "mask": mask}, verbose=0)
    np.testing.assert_allclose(again, out, rtol=1e-6, atol=1e-7)


def test_the_subtype_penalty_spares_any_and_survives_safe_mode(stage1, tmp_path):
    kernel = np.arange(12, dtype="float32").reshape(2, 6)
    # 0.5 x the squares of the five subtype columns: 0+1+4+9+16 + 36+49+64+81+100.
    assert float(SubtypeL2(0.5)(kernel)) == 0.5 * 360
    config = replace(stage1, sequence=replace(stage1.sequence, subtype_l2=0.01))
    model = build_sequence_model(config, width=18)
    assert isinstance(model.get_layer("correction").kernel_regularizer, SubtypeL2)
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras").get_layer("correction").kernel_regularizer
    assert isinstance(again, SubtypeL2) and again.strength == 0.01


def test_any_coupling_moves_each_subtype_by_a_share_of_the_any_correction(stage1):
    config = replace(stage1, sequence=replace(stage1.sequence, any_coupling=0.5))
    model = build_sequence_model(config, width=18)
    correction = model.get_layer("correction")
    kernel, bias = correction.get_weights()
    bias[:] = [0.1, 0.2, 0.3, 0.4, 0.5, -2.0]  # corrections of each label; `any` is -2
    correction.set_weights([kernel, bias])
    series = np.random.default_rng(1).normal(size=(1, 4, 18)).astype("float32")
    p = model.predict({"slices": series, "mask": np.ones((1, 4), "float32")}, verbose=0)
    logits = np.log(p / (1 - p))
    shift = logits - series[..., :6]
    # Subtypes: their own correction plus half of any's (-1); any: its own (-2).
    np.testing.assert_allclose(
        shift[0], np.tile([-0.9, -0.8, -0.7, -0.6, -0.5, -2.0], (4, 1)), atol=1e-4
    )


def test_stage2_resumes_and_the_pipeline_writes_a_valid_submission(
    stage1, tiny_work, tiny_competition
):
    with pytest.raises(Interrupt):
        train_sequence_fold(stage1, 0, verbose=0, callbacks=[StopAfterFirstEpoch()])
    recorder = RecordEpochs()
    result = train_sequence_fold(stage1, 0, verbose=0, callbacks=[recorder])
    assert recorder.epochs == [1]
    assert pd.read_csv(stage1.fold_dir(0, stage=2) / "history.csv")["epoch"].tolist() == [0, 1]
    assert len(result.oof) == int((read_folds(tiny_work / "folds.csv") == 0).sum())
    train_folds(stage1, stage=2, verbose=0)
    evaluation = evaluate(stage1.stage_dir(2), tiny_work)
    assert evaluation.report["images"] == len(read_prepared_labels(tiny_work))
    prediction = predict_sequence_test(stage1)
    assert (
        prediction.report["unreadable_given_prior"] == tiny_competition.manifest["corrupt"]["test"]
    )
    validate_submission(
        prediction.submission, tiny_competition.root / "stage_2_sample_submission.csv"
    )


def test_cli_evaluates_both_stages_and_predicts_with_stage_2(stage1, capsys):
    from rsna.cli import main

    train_folds(stage1, stage=2, verbose=0)
    saved = str(stage1.run_dir / "config.toml")
    assert main(["evaluate", saved]) == 0
    out = capsys.readouterr().out
    assert "stage 1 and stage 2 side by side" in out and "stage 2 / stage 1" in out
    assert (stage1.run_dir / "stages.png").stat().st_size > 0
    submission = stage1.stage_dir(2) / "submission.csv"
    submission.unlink(missing_ok=True)
    assert main(["predict", saved, "--stage", "2"]) == 0
    assert "stage 2: predicted" in capsys.readouterr().out
    assert submission.exists()
    assert main(["predict", saved, "--stage", "3"]) == 2  # argparse's choices, as exit 2


def test_embeddings_average_the_tta_views(stage1, tiny_work, tmp_path):
    import dataclasses

    config = dataclasses.replace(
        stage1, predict=dataclasses.replace(stage1.predict, tta=("none", "hflip"))
    )
    model = load_model(stage1.fold_dir(0) / "best.keras")
    embedder = keras.Model(model.input, [model.get_layer("logits").output] * 2)
    ids = read_folds(tiny_work / "folds.csv").index[:10].tolist()
    embed_images(embedder, ids, config, tmp_path / "e.npz")
    logit_model = keras.Model(model.input, model.get_layer("logits").output)
    expected = np.mean(
        [
            logit_model.predict(
                DataGenerator.from_config(config, ids, batch_size=4, to_fit=False, hflip=flip),
                verbose=0,
            )
            for flip in (False, True)
        ],
        axis=0,
    )
    got = read_embeddings(tmp_path / "e.npz")
    np.testing.assert_allclose(
        got.filter(like="logit_").to_numpy(), expected, rtol=1e-2, atol=1e-2
    )  # float16 storage
    unflipped = logit_model.predict(
        DataGenerator.from_config(config, ids, batch_size=4, to_fit=False), verbose=0
    )
    assert np.abs(unflipped - expected).max() > 1e-3  # the views differ, so the test can fail


def _studies_folder(work, folder):
    """The test split's DICOM files as someone's own studies: nested by study and series,
    renamed without extension, beside a text file, an MR slice and a truncated slice."""
    meta = read_metadata(work)
    test = meta[meta["split"] == "test"]
    for n, (_, row) in enumerate(test.iterrows()):
        target = folder / row["study_uid"] / row["series_uid"] / f"IM{n:04d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_dir(work) / row["file"], target)
    (folder / "README.txt").write_text("scans\n")
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "mr.dcm")
    data = (data_dir(work) / test["file"].iloc[0]).read_bytes()
    (folder / "cut.dcm").write_bytes(data[: len(data) // 2])
    return folder


def test_predict_dicom_dir_equals_the_test_predictions_of_both_stages(
    stage1, tiny_work, tiny_competition, tmp_path, monkeypatch
):
    from rsna.training import external
    from rsna.training.external import predict_dicom_dir
    from rsna.training.stage1 import predict_test as predict_slice_test

    train_folds(stage1, stage=2, verbose=0)
    folder = _studies_folder(tiny_work, tmp_path / "studies")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        one = predict_dicom_dir(stage1, folder, tmp_path / "one", stage=1, workers=1)
        both = predict_dicom_dir(stage1, folder, tmp_path / "both", threshold=0.3, workers=1)
        slice_test = predict_slice_test(stage1, write=False).predictions
        series_test = predict_sequence_test(stage1, write=False).predictions
        monkeypatch.setattr(external, "PRELOAD_BYTES", 0)  # read the DICOMs at every pass
        direct = predict_dicom_dir(stage1, folder, tmp_path / "direct", stage=1, workers=1)
    pd.testing.assert_frame_equal(direct.slices, one.slices)  # the fast path changes nothing
    corrupt = tiny_competition.manifest["corrupt"]["test"]
    assert one.report["stage"] == 1 and both.report["stage"] == 2
    assert not set(corrupt) & set(one.slices.index)
    counts = one.report["files"]
    assert counts["not DICOM"] >= 1 and counts["not CT"] == 1 and counts["unreadable"] >= 1
    unreadable = pd.read_csv(tmp_path / "one" / "unreadable.csv")
    assert "cut.dcm" in unreadable["file"].tolist()
    # stage 1 read from the DICOMs equals stage 1 read from the (lossless) store
    ids = one.slices.index
    np.testing.assert_allclose(one.slices[list(LABELS)], slice_test.loc[ids], atol=1e-5)
    np.testing.assert_allclose(
        both.slices[[f"stage1_{c}" for c in LABELS]], one.slices[list(LABELS)], atol=1e-5
    )
    # stage 2 equals the test predictions on every series without an unreadable slice
    meta = read_metadata(tiny_work)
    broken = set(meta.loc[meta.index.isin(corrupt), "series_uid"])
    whole = both.slices.index[~both.slices["series_uid"].isin(broken)]
    assert len(whole) > len(both.slices) / 2
    np.testing.assert_allclose(
        both.slices.loc[whole, list(LABELS)], series_test.loc[whole], atol=1e-4
    )
    assert np.abs(both.slices[list(LABELS)] - one.slices[list(LABELS)]).to_numpy().max() > 1e-3
    # the study table, its positives and their figures
    studies = pd.read_csv(tmp_path / "both" / "studies.csv", index_col="study_uid")
    expected = both.slices.groupby("study_uid")[list(LABELS)].max()
    np.testing.assert_allclose(studies[list(LABELS)], expected.loc[studies.index], atol=1e-6)
    assert studies["slices"].sum() == len(both.slices)
    assert (studies["positive"] == (studies["any"] >= 0.3)).all()
    figures = sorted(p.stem for p in (tmp_path / "both" / "studies").glob("*.png"))
    assert figures == sorted(studies.index[studies["positive"]])
    report = json.loads((tmp_path / "both" / "report.json").read_text())
    assert report["positive_studies"] == int(studies["positive"].sum()) and report["seconds"] > 0


def test_cli_predicts_a_dicom_folder_and_refuses_bad_outputs(stage1, tiny_work, tmp_path, capsys):
    from rsna.cli import main

    folder = _studies_folder(tiny_work, tmp_path / "studies")
    saved = str(stage1.run_dir / "config.toml")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["predict", saved, "--dicom-dir", str(folder), "--out", str(tmp_path / "o"), "--stage", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "CT slices in" in out and "1 not CT" in out and "stage 1: folds fold_0" in out
    assert (tmp_path / "o" / "slices.csv").exists()
    # a run folder copied elsewhere predicts with its own models, and says so
    moved = shutil.copytree(stage1.run_dir, tmp_path / "moved")
    shutil.rmtree(moved / "stage2", ignore_errors=True)
    argv = ["--dicom-dir", str(folder), "--out", str(tmp_path / "m"), "--set", "data.work_dir=/nowhere"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main(["predict", str(moved / "config.toml"), *argv]) == 0
    out = capsys.readouterr().out
    assert f"trained in {stage1.run_dir}; predicting with the fold models beside it" in out
    assert "stage 1 only: stage 2 is not trained for every fold" in out
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "m" / "slices.csv", index_col=0)[list(LABELS)],
        pd.read_csv(tmp_path / "o" / "slices.csv", index_col=0)[list(LABELS)],
        atol=1e-6,
    )
    for argv, message in (
        (["--dicom-dir", str(folder)], "--dicom-dir needs --out"),
        (["--out", str(tmp_path / "x")], "--out and --threshold go with --dicom-dir"),
        (["--dicom-dir", str(folder), "--out", str(folder / "o")], "`out` must be outside"),
        (["--dicom-dir", str(folder), "--out", str(tiny_work)], "not an earlier"),
        (["--dicom-dir", str(folder), "--out", str(tmp_path / "y"), "--threshold", "1"], "`threshold` must be a number in (0, 1)"),
    ):  # fmt: skip
        assert main(["predict", saved, *argv]) == 2
        assert message in capsys.readouterr().err


def test_external_scores_a_run_on_a_synthetic_cq500(stage1, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from rsna.cli import main
    from rsna.data.cq500 import make_cq500
    from rsna.data.synthetic import SynthConfig
    from rsna.training.external import evaluate_cq500

    planted = make_cq500(
        tmp_path / "cq500", SynthConfig(patients=6, slices=6, size=48, seed=2), workers=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        result = evaluate_cq500(stage1, tmp_path / "cq500", tmp_path / "ext", stage=1, bootstrap=50)
    patients = pd.read_csv(tmp_path / "ext" / "patients.csv", index_col="name")
    assert result.report["patients"] == len(planted) == len(patients)
    assert result.report["stage"] == 1
    truth = result.patients[[f"truth_{c}" for c in LABELS]].set_axis(list(LABELS), axis=1)
    for label, row in result.scores.iterrows():
        y = truth[label].to_numpy()
        if y.min() != y.max():
            assert row["auc"] == pytest.approx(roc_auc_score(y, patients[label]))
            assert row["auc_low"] <= row["auc"] <= row["auc_high"]
        assert 0.0 < row["threshold"] <= 1.0
    report = json.loads((tmp_path / "ext" / "external.json").read_text())
    assert set(report["scores"]) == set(LABELS) and report["bootstrap"] == 50
    assert (tmp_path / "ext" / "roc.png").stat().st_size > 0
    assert (tmp_path / "ext" / "predictions" / "slices.csv").exists()
    saved = str(stage1.run_dir / "config.toml")
    argv = ["external", saved, "--cq500", str(tmp_path / "cq500"), "--out", str(tmp_path / "e2")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        assert main([*argv, "--bootstrap", "20", "--stage", "1"]) == 0
    out = capsys.readouterr().out
    assert "CQ500: 6 patients read and predicted, stage 1" in out and "95% CI" in out
    (tmp_path / "empty").mkdir()
    assert main(["external", saved, "--cq500", str(tmp_path / "empty"), "--out", str(tmp_path / "e3")]) == 2  # fmt: skip
    assert "no reads.csv" in capsys.readouterr().err


def test_view_draws_a_study_in_z_order_with_labels_and_both_stages(
    stage1, tiny_work, tmp_path, capsys
):
    from rsna.cli import main
    from rsna.data.cache import ImageCache, complete_store
    from rsna.evaluate import read_oof
    from rsna.plots import plot_study_slices
    from rsna.training.saliency import any_saliency
    from rsna.training.stage1 import predict_test as predict_slice_test
    from rsna.view import most_positive, study_slices, view_study

    train_folds(stage1, stage=2, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        predict_slice_test(stage1)
        predict_sequence_test(stage1)
    meta = read_metadata(tiny_work)
    labels = read_prepared_labels(tiny_work)
    train_study = meta.loc[meta["split"] == "train", "study_uid"].iloc[0]
    slices = study_slices(stage1, train_study)
    assert slices["slice_index"].is_monotonic_increasing and slices["z"].is_monotonic_increasing
    np.testing.assert_array_equal(slices["label_any"], labels.loc[slices.index, "any"])
    oof1, _ = read_oof(stage1.stage_dir(1))
    oof2, _ = read_oof(stage1.stage_dir(2))
    np.testing.assert_allclose(slices["stage1_any"], oof1.loc[slices.index, "any"])
    np.testing.assert_allclose(slices["stage2_subdural"], oof2.loc[slices.index, "subdural"])
    test_study = meta.loc[meta["split"] == "test", "study_uid"].iloc[0]
    test = study_slices(stage1, test_study)
    assert test["label_any"].isna().all() and test["stage1_any"].notna().any()
    images = ImageCache(complete_store(tiny_work, stage1.image.spec, stage1.codec))
    figure = plot_study_slices(images, slices)
    panels = [ax for ax in figure.axes if ax.images or ax.get_title().endswith("(unreadable)")]
    assert len(panels) == len(slices)
    zs = [float(ax.get_title().split()[0][2:]) for ax in panels]
    assert zs == sorted(zs) and zs == pytest.approx(slices["z"].tolist(), abs=0.05)
    assert view_study(stage1, train_study).exists()
    top = most_positive(slices, n=2)
    assert slices.loc[top, "stage1_any"].tolist() == sorted(slices["stage1_any"])[::-1][:2]
    explained = any_saliency(stage1, top)
    figure = plot_study_slices(images, slices, explained=explained)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title().startswith("saliency")]
    assert len(titles) == 2
    saved = str(stage1.run_dir / "config.toml")
    assert main(["view", saved, "--study", test_study, "--out", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["view", saved, "--study", "ID_nope"]) == 2
    assert "`study` 'ID_nope' is not in" in capsys.readouterr().err


def test_explain_writes_each_labels_saliency_and_refuses_what_is_not_there(
    stage1, tiny_work, tmp_path, capsys
):
    from rsna.cli import main

    saved = str(stage1.run_dir / "config.toml")
    image = read_folds(tiny_work / "folds.csv").index[0]
    assert main(["explain", saved, "--image", image, "--out", str(tmp_path / "s.png")]) == 0
    assert f"image {image}: wrote" in capsys.readouterr().out
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", saved, "--image", image]) == 0
    assert (stage1.run_dir / "explain" / f"{image}.png").exists()
    assert main(["explain", saved, "--image", "ID_nope"]) == 2
    assert "`image` 'ID_nope' is not in" in capsys.readouterr().err
    assert main(["explain", saved, "--image", image, "--fold", "9"]) == 2
    assert "`fold` 9 has no best.keras" in capsys.readouterr().err
