"""rsna.data.cq500: the reads' majority, patient folders, scores with bootstrap intervals,
OOF thresholds and the synthetic CQ500 layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from harness import fuzz_settings
from rsna.data.cq500 import (
    CQ500_FINDINGS,
    READERS,
    CQ500Error,
    external_scores,
    make_cq500,
    oof_thresholds,
    patient_name,
    read_reads,
    youden_threshold,
)
from rsna.data.labels import LABELS
from rsna.data.synthetic import SynthConfig


def write_reads(path, votes: dict[str, list[tuple[int, int, int]]], **extra):
    """A reads.csv: `votes` maps a name to each finding's three reads (one tuple per finding
    in CQ500_FINDINGS order)."""
    rows = []
    for name, per_finding in votes.items():
        row = {"name": name, "Category": "B1"}
        for finding, reads in zip(CQ500_FINDINGS.values(), per_finding, strict=True):
            for reader, value in zip(READERS, reads, strict=True):
                row[f"{reader}:{finding}"] = value
        rows.append({**row, **extra})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_truth_is_the_majority_of_three_reads(tmp_path):
    none, one, two, three = (0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 1)
    path = write_reads(
        tmp_path / "reads.csv",
        {"CQ500-CT-0": [two, none, one, three, none, none], "CQ500-CT-7": [none] * 6},
        **{"R1:Fracture": 1},  # other findings are ignored
    )
    truth = read_reads(path)
    assert truth.index.tolist() == ["CQ500-CT-0", "CQ500-CT-7"]
    assert truth.loc["CQ500-CT-0"].to_dict() == {
        "any": 1, "epidural": 0, "intraparenchymal": 0, "intraventricular": 1,
        "subarachnoid": 0, "subdural": 0,
    }  # fmt: skip
    assert truth.loc["CQ500-CT-7"].sum() == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"R2:SDH": "2"}, r"`R2:SDH` must be 0 or 1. Received: R2:SDH='2' \(row 2\)"),
        ({"R3:EDH": ""}, "`R3:EDH` must be 0 or 1"),
        ({"name": "patient 1"}, "`name` must look like CQ500-CT-<n>. Received: name='patient 1'"),
    ],
)
def test_bad_reads_name_the_file_column_and_value(tmp_path, change, message):
    path = write_reads(tmp_path / "reads.csv", {"CQ500-CT-1": [(0, 0, 0)] * 6})
    frame = pd.read_csv(path, dtype=str)
    for column, value in change.items():
        frame[column] = value
    frame.to_csv(path, index=False)
    with pytest.raises(CQ500Error, match=message):
        read_reads(path)


def test_missing_columns_and_repeated_names_are_refused(tmp_path):
    path = write_reads(tmp_path / "r.csv", {"CQ500-CT-1": [(0, 0, 0)] * 6})
    pd.read_csv(path).drop(columns=["R3:SAH"]).to_csv(path, index=False)
    with pytest.raises(CQ500Error, match="no column R3:SAH"):
        read_reads(path)
    path = write_reads(tmp_path / "d.csv", {"CQ500-CT-1": [(0, 0, 0)] * 6})
    pd.concat([pd.read_csv(path)] * 2).to_csv(path, index=False)
    with pytest.raises(CQ500Error, match="'CQ500-CT-1' is repeated"):
        read_reads(path)


@given(st.integers(0, 10**6))
def test_a_patient_folder_names_its_patient(n):
    assert (
        patient_name(f"CQ500CT{n} CQ500CT{n}/Unknown Study/CT 4cm/CT000001.dcm") == f"CQ500-CT-{n}"
    )
    assert patient_name(f"CQ500-CT-{n}/a.dcm") == f"CQ500-CT-{n}"


@fuzz_settings(200)
@given(st.text(max_size=40))
def test_any_path_gives_a_name_or_none(text):
    name = patient_name(text + "/x.dcm")
    assert name is None or name.startswith("CQ500-CT-")
    assert patient_name("reads.csv") is None  # a file at the top is no patient's


def test_youden_threshold_on_a_hand_example():
    truth = np.array([0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.4, 0.6, 0.7, 0.9])
    # J at 0.6: tpr 3/4, fpr 0 -> 0.75; at 0.4: tpr 1, fpr 1/3 -> 0.667; at 0.5: 0.75 - 1/3
    assert youden_threshold(truth, scores) == pytest.approx(0.6)
    assert youden_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5


def _scores(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = pd.DataFrame(rng.integers(0, 2, (n, 6)), columns=list(LABELS))
    truth["epidural"] = 0  # one class only: no AUC
    scores = (truth * 0.3 + rng.uniform(0, 0.7, (n, 6))).astype(float)
    return truth, scores


def test_external_scores_equal_sklearn_and_bracket_the_auc():
    truth, scores = _scores()
    thresholds = dict.fromkeys(LABELS, 0.5)
    table = external_scores(truth, scores, thresholds, bootstrap=200, seed=3)
    for label in ("any", "subdural"):
        row = table.loc[label]
        assert row["auc"] == pytest.approx(roc_auc_score(truth[label], scores[label]))
        assert row["auc_low"] < row["auc"] < row["auc_high"] <= 1.0
        y, positive = truth[label] == 1, scores[label] >= 0.5
        assert row["sensitivity"] == pytest.approx((positive & y).sum() / y.sum())
        assert row["specificity"] == pytest.approx((~positive & ~y).sum() / (~y).sum())
    assert np.isnan(table.loc["epidural", "auc"]) and np.isnan(table.loc["epidural", "sensitivity"])
    again = external_scores(truth, scores, thresholds, bootstrap=200, seed=3)
    pd.testing.assert_frame_equal(table, again)
    other = external_scores(truth, scores, thresholds, bootstrap=200, seed=4)
    assert other.loc["any", "auc_low"] != table.loc["any", "auc_low"]
    with pytest.raises(CQ500Error, match="`bootstrap` must be positive"):
        external_scores(truth, scores, thresholds, bootstrap=0)
    with pytest.raises(CQ500Error, match="same patients"):
        external_scores(truth, scores.iloc[::-1], thresholds)


def test_oof_thresholds_work_at_study_level():
    index = pd.Index(["a1", "a2", "b1", "b2", "c1"], name="image_id")
    metadata = pd.DataFrame({"study_uid": ["A", "A", "B", "B", "C"]}, index=index)
    labels = pd.DataFrame(0, index=index, columns=list(LABELS))
    labels.loc["a2", "any"] = 1
    oof = pd.DataFrame(0.1, index=index, columns=list(LABELS))
    oof.loc["a2", "any"], oof.loc["b1", "any"] = 0.8, 0.3  # study max: A 0.8, B 0.3, C 0.1
    assert oof_thresholds(oof, labels, metadata)["any"] == pytest.approx(0.8)


def test_a_synthetic_cq500_has_the_layout_and_its_reads_agree_with_the_truth(tmp_path):
    planted = make_cq500(
        tmp_path / "cq", SynthConfig(patients=3, slices=4, size=32, seed=1), reader_error=0.0,
        workers=1,
    )  # fmt: skip
    assert planted.index.tolist() == ["CQ500-CT-0", "CQ500-CT-1", "CQ500-CT-2"]
    pd.testing.assert_frame_equal(
        read_reads(tmp_path / "cq" / "reads.csv")[list(LABELS)], planted[list(LABELS)]
    )
    folders = sorted(p.name for p in (tmp_path / "cq").iterdir() if p.is_dir())
    assert folders == [f"CQ500CT{n} CQ500CT{n}" for n in range(3)]
    assert not (tmp_path / "cq" / ".competition").exists()
    with pytest.raises(CQ500Error, match="already holds a reads.csv"):
        make_cq500(tmp_path / "cq", SynthConfig(patients=3, slices=4, size=32), workers=1)
