"""inference: probability only. Frames and a ``simulate_fn`` in; posteriors, rejections,
refinements and proposals out. Knows nothing of atoms, files or Ray."""

from inference.frame import Frame, make_frame

__all__ = ["Frame", "make_frame"]
