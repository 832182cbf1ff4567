"""library: candidate structures. Ingest DFT outputs, generate candidates, relax, priors, the
library file format and the built-in example libraries. No JAX transforms."""

from library.provenance import ID_DECIMALS, Provenance, content_id

__all__ = ["ID_DECIMALS", "Provenance", "content_id"]
