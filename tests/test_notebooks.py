"""The notebooks: stripped in git, and executed on a synthetic competition, in order (slow)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import nbformat
import pytest
from nbclient import NotebookClient

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
    for path in NOTEBOOKS:
        book = nbformat.read(path, as_version=4)
        NotebookClient(
            book, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
        ).execute()
    return folder


@pytest.mark.slow
def test_each_notebook_saves_non_blank_figures(executed):
    figures = executed / "work" / "figures"
    for prefix in ("01", "02", "03"):
        pngs = sorted(figures.glob(f"{prefix}_*.png"))
        assert pngs, f"notebook {prefix} saved no figure"
        for png in pngs:
            image = matplotlib.image.imread(png)
            assert image.reshape(-1, image.shape[-1]).std(axis=0).max() > 0.02, (
                f"{png.name} is a single colour"
            )
    assert (executed / "submission.csv").exists()
