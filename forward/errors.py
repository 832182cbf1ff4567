"""The one exception type for bad input across hypotest.

Messages say what was expected, what arrived, and how to fix it.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Input that cannot describe a physical specimen, beam, grid or frame."""
