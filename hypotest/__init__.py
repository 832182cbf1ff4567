"""hypotest: simulation-in-the-loop hypothesis testing of atomic structures for electron microscopy.

The product layer: hypotheses, the live session, frame sources, the simulated microscope,
session records, the CLI and the dashboard.

The names below load on first use (PEP 562 module ``__getattr__``), so importing a light module
of the package (the frame-stream codec :mod:`hypotest.live.zmqstream`, the frame readers
:mod:`hypotest.frames`) does not import JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_WHERE = {
    "Hypothesis": "hypotest.hypothesis",
    "hypothesis_from_entry": "hypotest.hypothesis",
    "load_hypotheses": "hypotest.hypothesis",
    "make_hypothesis": "hypotest.hypothesis",
}

__all__ = ["Hypothesis", "hypothesis_from_entry", "load_hypotheses", "make_hypothesis", "__version__"]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        if name.startswith("_"):
            raise AttributeError(f"module 'hypotest' has no attribute {name!r}")
        try:  # a submodule: ``import hypotest; hypotest.live``
            return importlib.import_module(f"hypotest.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hypotest.{name}":
                raise
            raise AttributeError(f"module 'hypotest' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static analysis and IDEs see: the eager imports
    from hypotest.hypothesis import Hypothesis, hypothesis_from_entry, load_hypotheses, make_hypothesis  # noqa: F401
