"""Chemical element symbols and their atomic numbers (IUPAC, Z = 1..103).

The scattering-factor parameterisations hypotest uses (Lobato 2014, Kirkland 2010) both cover
hydrogen through lawrencium, so Z is limited to 1..103.
"""

from __future__ import annotations

import difflib

from forward.errors import InputError

__all__ = ["SYMBOLS", "MAX_Z", "atomic_number", "symbol"]

SYMBOLS: tuple[str, ...] = (
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne",
    "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K", "Ca",
    "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr",
    "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn",
    "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd",
    "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb",
    "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg",
    "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th",
    "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm",
    "Md", "No", "Lr",
)  # fmt: skip
MAX_Z = len(SYMBOLS)
_Z = {s: i + 1 for i, s in enumerate(SYMBOLS)}


def atomic_number(sym: str) -> int:
    """Atomic number of an element symbol (case-sensitive, as written on the periodic table)."""
    z = _Z.get(sym)
    if z is None:
        fixed = str(sym).strip().capitalize()
        close = [fixed] if fixed in _Z else difflib.get_close_matches(str(sym), SYMBOLS, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"unknown element symbol {sym!r}: expected one of H..Lr (Z = 1..{MAX_Z}).{hint}"
        )
    return z


def symbol(z: int) -> str:
    """Element symbol of atomic number ``z``."""
    if not 1 <= int(z) <= MAX_Z:
        raise InputError(f"atomic number {z} is outside the supported range 1..{MAX_Z} (H..Lr)")
    return SYMBOLS[int(z) - 1]
