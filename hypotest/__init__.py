"""hypotest: simulation-in-the-loop hypothesis testing of atomic structures for electron microscopy.

The product layer: hypotheses, the live session, frame sources, the simulated microscope,
session records, the CLI and the dashboard.
"""

from hypotest.frames import FrameMeta, make_frame_meta
from hypotest.hypothesis import Hypothesis, make_hypothesis

__version__ = "0.1.0"

__all__ = ["FrameMeta", "Hypothesis", "make_frame_meta", "make_hypothesis", "__version__"]
