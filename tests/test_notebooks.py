"""The notebooks: stripped in git, and executed on a synthetic competition, in order (slow)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient

from harness import TF_NOISE
from rsna.data.synthetic import SynthConfig, make_competition

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_three_notebooks_and_they_are_stripped():
    assert [p.stem for p in NOTEBOOKS] == ["01_explore", "02_train_fold", "03_submission"]
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} has outputs"
                )
                assert "def " not in cell.source, f"{path.name} defines a function"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """A folder with a synthetic competition, after running the three notebooks there."""
    folder = tmp_path_factory.mktemp("notebook-run")
    make_competition(
        folder / "data", SynthConfig(patients=16, studies=2, slices=12, size=128, seed=1), workers=1
    )
    books = []
    # ipykernel forwards what C code writes to fd 2 (TensorFlow's start-up lines) into the
    # cell outputs, as on Kaggle, except under pytest: it checks this variable.
    current = os.environ.pop("PYTEST_CURRENT_TEST", None)
    try:
        for path in NOTEBOOKS:
            book = nbformat.read(path, as_version=4)
            NotebookClient(
                book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
            ).execute()
            books.append(book)
    finally:
        if current is not None:
            os.environ["PYTEST_CURRENT_TEST"] = current
    return folder, books


@pytest.mark.slow
def test_the_notebooks_are_as_quiet_as_the_cli(executed):
    _, books = executed
    printed = [
        line
        for book in books
        for cell in book.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
        for line in output.text.splitlines()
    ]
    noise = [line for line in printed if any(mark in line for mark in TF_NOISE)]
    assert noise == [], noise


@pytest.mark.slow
def test_each_notebook_saves_non_blank_figures(executed):
    folder, _ = executed
    figures = folder / "work" / "figures"
    for prefix in ("01", "02", "03"):
        pngs = sorted(figures.glob(f"{prefix}_*.png"))
        assert pngs, f"notebook {prefix} saved no figure"
        for png in pngs:
            image = matplotlib.image.imread(png)
            assert image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.02, (
                f"{png.name} is a single colour"
            )
    assert (folder / "submission.csv").exists()
