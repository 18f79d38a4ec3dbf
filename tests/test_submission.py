"""rsna.submission: every invalid case is refused and nothing is written; the valid one passes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rsna.data.labels import LABELS, to_long
from rsna.submission import (
    SubmissionError,
    build_submission,
    sample_image_ids,
    validate_submission,
    write_submission,
)

IDS = ["ID_0a", "ID_0b", "ID_0c"]


@pytest.fixture()
def sample(tmp_path):
    frame = to_long(pd.DataFrame(0.5, index=IDS, columns=list(LABELS)))
    path = tmp_path / "sample.csv"
    frame.to_csv(path, index=False)
    return path


def predictions(ids=IDS, value=0.3) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        rng.uniform(0.01, 0.99, (len(ids), 6)) if value is None else value,
        index=ids,
        columns=list(LABELS),
    )


def test_valid_submission_follows_the_sample(sample, tmp_path):
    preds = predictions(list(reversed(IDS)), value=None)
    path = write_submission(preds, sample, tmp_path / "submission.csv")
    written = pd.read_csv(path)
    expected = pd.read_csv(sample)
    assert written["ID"].tolist() == expected["ID"].tolist()
    assert written.loc[written["ID"] == "ID_0b_subdural", "Label"].item() == pytest.approx(
        preds.at["ID_0b", "subdural"], rel=1e-6
    )
    validate_submission(path, sample)
    assert sample_image_ids(sample).tolist() == IDS


def test_probabilities_are_clipped(sample):
    preds = predictions(value=0.0)
    preds.iloc[0] = 1.0
    frame = build_submission(preds, sample, clip=1e-3)
    assert frame["Label"].min() == pytest.approx(1e-3) and frame["Label"].max() == pytest.approx(
        1 - 1e-3
    )


def _with(frame: pd.DataFrame, image: str, label: str, value: float) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[image, label] = value
    return frame


INVALID = {
    "missing image": (
        lambda: predictions(IDS[:2]),
        "1 images of the sample have no prediction, e.g. ID_0c",
    ),
    "extra image": (
        lambda: predictions([*IDS, "ID_ff"]),
        "1 predicted images are not in the sample, e.g. ID_ff",
    ),
    "NaN": (
        lambda: _with(predictions(), "ID_0b", "any", np.nan),
        "prediction for ID_0b_any must be a probability",
    ),
    "infinite": (
        lambda: _with(predictions(), "ID_0a", "epidural", np.inf),
        "ID_0a_epidural must be a probability",
    ),
    "above one": (lambda: _with(predictions(), "ID_0c", "subdural", 1.5), "Received: 1.5"),
    "negative": (lambda: _with(predictions(), "ID_0c", "subdural", -0.1), "Received: -0.1"),
    "predicted twice": (lambda: predictions([*IDS, "ID_0a"]), "image ID_0a is predicted twice"),
    "missing column": (
        lambda: predictions().drop(columns="any"),
        r"lack label column\(s\) \['any'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_predictions_are_refused_and_nothing_is_written(sample, tmp_path, case):
    make, message = INVALID[case]
    target = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match=message):
        write_submission(make(), sample, target)
    assert not target.exists()


def test_bad_clip_and_bad_sample(sample, tmp_path):
    with pytest.raises(SubmissionError, match="`clip` must be in"):
        build_submission(predictions(), sample, clip=0.0)
    broken = tmp_path / "broken.csv"
    pd.read_csv(sample).iloc[:-1].to_csv(broken, index=False)
    with pytest.raises(
        SubmissionError, match="image ID_0c does not have exactly one row per label"
    ):
        build_submission(predictions(), broken)
    (tmp_path / "header.csv").write_text("Id,Prob\n")
    with pytest.raises(SubmissionError, match="header must be 'ID,Label'"):
        sample_image_ids(tmp_path / "header.csv")


def test_validate_existing_files(sample, tmp_path):
    good = write_submission(predictions(), sample, tmp_path / "good.csv")
    frame = pd.read_csv(good)
    frame.iloc[:-6].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(SubmissionError, match="IDs differ from the sample"):
        validate_submission(tmp_path / "short.csv", sample)
    frame.assign(Label=frame["Label"].astype(object).where(frame.index != 3, "x")).to_csv(
        tmp_path / "text.csv", index=False
    )
    with pytest.raises(SubmissionError, match="line 5: Label must be a probability. Received: 'x'"):
        validate_submission(tmp_path / "text.csv", sample)
    text = good.read_text().splitlines()
    text[4] = "," + text[4].split(",")[1]  # line 5 loses its ID
    (tmp_path / "empty_id.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(SubmissionError, match="empty_id.csv, line 5: an empty ID in"):
        validate_submission(tmp_path / "empty_id.csv", sample)
