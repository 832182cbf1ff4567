"""hypotest: simulation-in-the-loop hypothesis testing of atomic structures for electron microscopy.

The product layer: hypotheses, the live session, frame sources, the simulated microscope,
session records, the CLI and the dashboard.

The names below load on first use (PEP 562 module ``__getattr__``), so importing a light module
of the package (the frame-stream codec :mod:`hypotest.live.zmqstream`, the frame readers
:mod:`hypotest.frames`) does not import JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forward._lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_WHERE = {
    "Hypothesis": "hypotest.hypothesis",
    "hypothesis_from_entry": "hypotest.hypothesis",
    "load_hypotheses": "hypotest.hypothesis",
    "make_hypothesis": "hypotest.hypothesis",
}

__all__ = ["Hypothesis", "hypothesis_from_entry", "load_hypotheses", "make_hypothesis", "__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


if TYPE_CHECKING:  # what static analysis and IDEs see: the eager imports
    from hypotest.hypothesis import Hypothesis, hypothesis_from_entry, load_hypotheses, make_hypothesis  # noqa: F401
