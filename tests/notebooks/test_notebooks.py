"""Every notebook runs top to bottom with its own (small) parameters and saves its plots."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import SHARED_DATA

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
FIGURES = {
    "ab_simulation": ["ab_cumulative.png", "ab_bandits.png"],
    "debiasing": ["ctr_by_position.png", "item_estimates.png", "ultr_ndcg.png",
                  "examination_curve.png"],
    "replay_obd": ["obd_statistics.png"],
}


def _execute(name: str, cwd: Path) -> nbformat.NotebookNode:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # A failing cell raises CellExecutionError with the cell's traceback.
    NotebookClient(book, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return book


def _printed(book: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in book.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))


def test_every_notebook_is_tested() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", ["ab_simulation", "debiasing"])
def test_notebook_runs_and_saves_its_plots(name: str, tmp_path: Path) -> None:
    _execute(name, tmp_path)
    for figure in FIGURES[name]:
        assert (tmp_path / "figures" / figure).stat().st_size > 10_000, figure


@pytest.mark.parametrize("data", ["obd", "stand-in"])
def test_replay_obd_notebook_runs_on_the_sample_or_a_stand_in(
        data: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    obd = SHARED_DATA / "obd"
    if data == "obd" and not (obd / "random" / "men" / "men.csv").exists():
        pytest.skip("the Open Bandit Dataset sample is not in ../shared/data")
    monkeypatch.setenv("CLICKLOOP_OBD_DIR", str(obd if data == "obd" else tmp_path / "none"))
    # Each resample refits the reward model: two are enough to run the off-policy section.
    monkeypatch.setenv("CLICKLOOP_OPE_BOOTSTRAP", "2")
    book = _execute("replay_obd", tmp_path)
    assert (tmp_path / "figures" / "obd_statistics.png").stat().st_size > 10_000
    assert (tmp_path / "figures" / "obd_ope.png").exists() == (data == "obd")
    assert ("skipping the off-policy estimates" in _printed(book)) == (data == "stand-in")
    assert ("simulated stand-in" in _printed(book)) == (data == "stand-in")
