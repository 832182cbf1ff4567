"""The sampling grid of a simulation: number of points and sampling along x and y.

Arrays on a ``Grid`` are indexed ``[x, y]``, as in abTEM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from forward._pytree import pytree_dataclass, static_field
from forward._validate import as_float_array
from forward.errors import InputError

__all__ = ["Grid", "make_grid", "fft_friendly_size", "MAX_GRID_POINTS"]

#: The most points a simulation grid may have: 8192 x 8192. One complex64 wave on it takes
#: 512 MiB and a multislice holds several such arrays (potential slice, transmission function,
#: wave, FFT work space), so a larger grid would not fit a workstation's memory; a sampling that
#: asks for more (e.g. 1e-4 Å over a 10 Å cell: 1e10 points, ~80 GiB per wave) is refused with
#: the finest sampling that fits.
MAX_GRID_POINTS = 8192 * 8192


@pytree_dataclass
class Grid:
    """Real-space grid. Both fields are static: a new grid means a new compiled program.

    Attributes:
        gpts: number of grid points ``(nx, ny)``.
        sampling: pixel size ``(dx, dy)`` [Å].
    """

    gpts: tuple[int, int] = static_field()
    sampling: tuple[float, float] = static_field()

    @property
    def extent(self) -> tuple[float, float]:
        """Side lengths of the periodic cell the grid covers [Å]."""
        return (self.gpts[0] * self.sampling[0], self.gpts[1] * self.sampling[1])

    @property
    def reciprocal_sampling(self) -> tuple[float, float]:
        """Spacing of the spatial frequencies of the FFT [1/Å]."""
        return (1.0 / self.extent[0], 1.0 / self.extent[1])


def _is_smooth(n: int, primes: tuple[int, ...] = (2, 3, 5, 7)) -> bool:
    for p in primes:
        while n % p == 0:
            n //= p
    return n == 1


def fft_friendly_size(n: int) -> int:
    """The smallest 2·3·5·7-smooth integer >= ``n`` (a prime-sized grid was 3.7x slower)."""
    if n < 1:
        raise InputError(f"grid size must be >= 1, got {n}")
    m = int(n)
    while not _is_smooth(m):
        m += 1
    return m


def _pair(value: float | int | Sequence[float], name: str) -> tuple[float, float]:
    arr = as_float_array(value, name)
    if arr.ndim == 0:
        return (float(arr), float(arr))
    if arr.shape != (2,):
        raise InputError(f"{name} must be a scalar or a pair (x, y), got shape {list(arr.shape)}")
    return (float(arr[0]), float(arr[1]))


def make_grid(
    *,
    extent: float | Sequence[float] | None = None,
    gpts: int | Sequence[int] | None = None,
    sampling: float | Sequence[float] | None = None,
    fft_friendly: bool = True,
) -> Grid:
    """A validated :class:`Grid` from any two of ``extent`` [Å], ``gpts`` and ``sampling`` [Å].

    With ``extent`` and ``sampling``, the number of points is rounded *up* to an FFT-friendly
    size (unless ``fft_friendly=False``) and the sampling actually used, ``extent / gpts``, is
    what the returned grid reports; it is never coarser than requested. A grid of more than
    :data:`MAX_GRID_POINTS` points is refused (with the finest sampling that fits the extent)
    before anything is allocated.
    """
    given = [n for n, v in (("extent", extent), ("gpts", gpts), ("sampling", sampling)) if v is not None]
    if len(given) != 2:
        raise InputError(
            f"make_grid needs exactly two of extent, gpts, sampling; got {given or 'none'}"
        )
    if gpts is not None:
        g = _pair(gpts, "gpts")
        if any(x != int(x) or x < 1 for x in g):
            raise InputError(f"gpts must be positive integers, got {gpts!r}")
        n = (int(g[0]), int(g[1]))
        if n[0] * n[1] > MAX_GRID_POINTS:
            raise InputError(
                f"a simulation grid of {n[0]} x {n[1]} points ({n[0] * n[1]:.3g}) exceeds the limit of "
                f"{MAX_GRID_POINTS} points (forward.grid.MAX_GRID_POINTS, 8192 x 8192: one complex64 wave takes "
                f"{_gib(MAX_GRID_POINTS):.2g} GiB); use fewer points"
            )
        if extent is not None:
            e = _positive_pair(extent, "extent")
            return Grid(gpts=n, sampling=(e[0] / n[0], e[1] / n[1]))
        s = _positive_pair(sampling, "sampling")
        return Grid(gpts=n, sampling=s)
    e = _positive_pair(extent, "extent")
    s = _positive_pair(sampling, "sampling")
    n = _gpts_for(e, s, fft_friendly)
    if n[0] * n[1] > MAX_GRID_POINTS:
        fit = _finest_sampling(e, fft_friendly)
        points = float(n[0]) * n[1]
        raise InputError(
            f"sampling {min(s):.4g} Å over the {e[0]:.4g} x {e[1]:.4g} Å cell needs a grid of {n[0]:.6g} x "
            f"{n[1]:.6g} points ({points:.3g}; one complex64 wave would take {_gib(points):.3g} GiB), beyond the "
            f"limit of {MAX_GRID_POINTS} points (forward.grid.MAX_GRID_POINTS, 8192 x 8192); the finest sampling "
            f"that fits this cell is {fit:.4g} Å (typical: 0.02-0.1 Å)"
        )
    return Grid(gpts=(int(n[0]), int(n[1])), sampling=(e[0] / n[0], e[1] / n[1]))


def _gpts_for(extent, sampling, fft_friendly: bool) -> tuple[int, int]:
    """Grid points that sample ``extent`` at ``sampling`` or finer, counted without building
    anything; beyond :data:`MAX_GRID_POINTS` along an axis the count is not rounded to an
    FFT-friendly size (it is refused anyway)."""
    raw = []
    for ei, si in zip(extent, sampling):
        r = ei / si
        raw.append(max(1, math.ceil(r - 1e-9)) if math.isfinite(r) else 2**63)
    if max(raw) > MAX_GRID_POINTS or not fft_friendly:
        return (int(raw[0]), int(raw[1]))
    return (fft_friendly_size(raw[0]), fft_friendly_size(raw[1]))


def _finest_sampling(extent, fft_friendly: bool) -> float:
    """The finest sampling [Å] (one number for both axes, rounded up to 4 digits) whose grid over
    ``extent`` has at most :data:`MAX_GRID_POINTS` points."""
    s = math.sqrt(extent[0] * extent[1] / MAX_GRID_POINTS)
    while True:
        q = 10.0 ** (math.floor(math.log10(s)) - 3)
        s = math.ceil(s / q) * q  # up to 4 significant digits: never finer than what fits
        n = _gpts_for(extent, (s, s), fft_friendly)
        if n[0] * n[1] <= MAX_GRID_POINTS:
            return s
        s *= 1.001


def _gib(points: float) -> float:
    return points * 8 / 2**30  # complex64: 8 bytes per point


def _positive_pair(value, name: str) -> tuple[float, float]:
    p = _pair(value, name)
    if min(p) <= 0:
        raise InputError(f"{name} must be positive [Å], got {value!r}")
    return p
