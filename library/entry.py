"""A library entry: one candidate as the microscope sees it, with its id, prior and provenance.

Everything :func:`hypotest.hypothesis.make_hypothesis` needs: ``make_hypothesis(entry.specimen,
name=entry.name, family=entry.family, prior=entry.prior, provenance=entry.provenance)``.
"""

from __future__ import annotations

import math

import numpy as np

from forward import InputError, Specimen, pytree_dataclass, static_field
from library.provenance import Provenance, content_id

__all__ = ["LibraryEntry", "make_entry", "check_candidate_fields"]


@pytree_dataclass
class LibraryEntry:
    """One hypothesis-to-be of a library.

    The specimen and the prior weight are leaves; the rest is static metadata (as in
    ``hypotest.Hypothesis``).

    Attributes:
        specimen: validated :class:`forward.Specimen` (orthogonal cell, beam along z) [Å].
        prior: prior weight (>= 0; normalised within the family by :mod:`library.priors`).
        id: content hash of species, positions and cell (:func:`library.content_id`).
        name: human-readable name.
        family: entries of one family are compared pixel for pixel (they share a cell).
        tags: short labels.
        provenance: :class:`~library.provenance.Provenance`.
    """

    specimen: Specimen
    prior: np.ndarray
    id: str = static_field()
    name: str = static_field(default="")
    family: str = static_field(default="")
    tags: tuple[str, ...] = static_field(default=())
    provenance: Provenance = static_field(default=Provenance())


def make_entry(
    specimen: Specimen,
    *,
    name: str,
    family: str,
    tags=(),
    prior: float = 1.0,
    provenance: Provenance | None = None,
) -> LibraryEntry:
    """A validated :class:`LibraryEntry` whose id is :func:`content_id` of ``specimen``."""
    p, provenance = check_candidate_fields(specimen, prior, provenance, name)
    if not str(family):
        raise InputError(f"entry {name!r} needs a non-empty family (entries of one family share a cell)")
    return LibraryEntry(
        specimen=specimen,
        prior=np.asarray(p),
        id=content_id(specimen),
        name=str(name),
        family=str(family),
        tags=tuple(str(t) for t in tags),
        provenance=provenance,
    )


def check_candidate_fields(specimen, prior, provenance, name: str = "") -> tuple[float, Provenance]:
    """Checks shared by library entries and ``hypotest`` hypotheses: a Specimen, a finite prior
    weight >= 0, a Provenance (or None). Returns ``(prior, provenance)``."""
    if not isinstance(specimen, Specimen):
        raise InputError(
            f"specimen must be a forward.Specimen (see forward.make_specimen), got {type(specimen).__name__}"
        )
    of = f" of {name!r}" if name else ""
    try:
        p = float(prior)
    except (TypeError, ValueError):
        raise InputError(f"prior{of} must be a number, got {prior!r}") from None
    if not (math.isfinite(p) and p >= 0):
        raise InputError(f"prior weight{of} must be finite and >= 0, got {prior!r}")
    if provenance is not None and not isinstance(provenance, Provenance):
        raise InputError(f"provenance must be a library.Provenance, got {type(provenance).__name__}")
    return p, provenance or Provenance()
