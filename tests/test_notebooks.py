"""Every notebook in notebooks/ runs top to bottom (nbclient, the python3 kernel of this
environment, cwd = notebooks/) and its figures are real outputs (PNG images).

The notebooks are stored without outputs; the executed copies are written to out/notebooks/
(ignored by git) whether or not they fail, to look at afterwards. 04 starts a Ray head node and
is marked ``ray``; 02 (a real-time demo session of 12 frames at 2 Hz, ~90 s) and 03 (MAP, NUTS and
design, ~55 s) are marked ``slow`` so the default suite stays under 15 minutes on two cores (CI
runs them).
"""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "out" / "notebooks"
#: Per-cell time limit [s]: generous for a shared 2-core machine; a hung cell fails the test.
CELL_TIMEOUT = 600

#: notebook -> the fewest PNG figures it must produce (one per plotting cell, at least).
CASES = [
    pytest.param("01_quickstart.ipynb", 6, id="01_quickstart"),
    pytest.param("02_explore_session.ipynb", 6, id="02_explore_session", marks=pytest.mark.slow),
    pytest.param("03_refine_and_design.ipynb", 6, id="03_refine_and_design", marks=pytest.mark.slow),
    pytest.param("04_cluster.ipynb", 1, id="04_cluster", marks=pytest.mark.ray),
]


def _pngs(nb) -> list[bytes]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = o.get("data", {})
            if "image/png" in data:
                out.append(base64.b64decode(data["image/png"]))
    return out


def test_every_notebook_is_tested_and_stored_without_outputs():
    stored = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert stored == sorted(c.values[0] for c in CASES), "add the new notebook to CASES"
    for name in stored:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for k, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name} cell {k}: clear its outputs"
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1, f"{name}: one cell tagged 'parameters' (papermill-style) expected"


@pytest.mark.parametrize(("name", "min_figures"), CASES)
def test_notebook_runs_top_to_bottom(name, min_figures):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        client.execute()  # raises CellExecutionError (with the traceback) if any cell fails
    finally:
        nbformat.write(nb, OUT / name)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    pngs = _pngs(nb)
    assert len(pngs) >= min_figures, f"{name}: {len(pngs)} figures, expected at least {min_figures}"
    for png in pngs:
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000, "a figure output is not a real PNG image"
