"""A hypothesis: one candidate atomic structure with its identity, prior and provenance."""

from __future__ import annotations

import numpy as np

from forward import InputError, Specimen, pytree_dataclass, static_field
from library.entry import check_candidate_fields
from library.provenance import Provenance, content_id

__all__ = ["Hypothesis", "make_hypothesis"]


@pytree_dataclass
class Hypothesis:
    """One candidate structure.

    The specimen and the prior weight are leaves; id, name, family and provenance are static
    metadata. Hypotheses with different ids therefore cannot be stacked into one pytree: batch
    their specimens with :func:`forward.stack_specimens` and keep the metadata beside the batch.

    Attributes:
        specimen: the atoms, oriented for the microscope.
        prior: prior weight (>= 0, need not be normalised).
        id: content hash of species, positions and cell (:func:`content_id`).
        name: human-readable name ("V_S at site 3").
        family: hypotheses of one family share a cell and are compared pixel for pixel.
        provenance: :class:`Provenance`.
    """

    specimen: Specimen
    prior: np.ndarray
    id: str = static_field()
    name: str = static_field(default="")
    family: str = static_field(default="")
    provenance: Provenance = static_field(default=Provenance())


def make_hypothesis(
    specimen: Specimen,
    *,
    name: str = "",
    family: str = "",
    prior: float = 1.0,
    provenance: Provenance | None = None,
) -> Hypothesis:
    """A validated :class:`Hypothesis` whose id is the content hash of ``specimen``."""
    p, provenance = check_candidate_fields(specimen, prior, provenance, name)
    return Hypothesis(
        specimen=specimen,
        prior=np.asarray(p),
        id=content_id(specimen),
        name=str(name),
        family=str(family),
        provenance=provenance,
    )
