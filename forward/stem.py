"""STEM by multislice: a scan of probe positions, each propagated through the specimen and detected.

For every probe position ``r0`` the probe ``psi0 = ifft2(A exp(-i chi) exp(-2 pi i k.r0))``
(:mod:`forward.probe`) goes through the multislice (:mod:`forward.propagation`: transmit, then
propagate, each slice) and the diffraction intensity ``|fft2(psi_exit)|²`` is detected
(:mod:`forward.detectors`); Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed.
(2010), sec. 6.6 and eq. 5.53. The last inverse FFT of the multislice and the detector's forward
FFT cancel (the propagator has unit modulus inside the antialias aperture), so the exit wave is
detected straight from the Fourier space of the last slice: 1 + 2 n_slices - 1 FFTs per position.

Positions are processed in batches of ``batch_size`` with ``lax.map``, so memory is bounded by
one batch whatever the scan size. A finite Gaussian source (``BeamCondition.source_size``, sigma
[Å]) blurs the scanned image over the scan axes exactly as abTEM 1.0.11's
``Images.gaussian_filter`` (``scipy.ndimage.gaussian_filter``, periodic boundary, kernel truncated
at 4 sigma) does.

Outputs are indexed ``[sx, sy]`` (annular), ``[sx, sy, segment]`` (segmented) or
``[sx, sy, kx, ky]`` (4D-STEM), fractions of the beam.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from forward._pytree import pytree_dataclass, static_field
from forward._validate import as_float_array
from forward.beam import BeamCondition
from forward.constants import wavelength
from forward.detectors import check_detector, make_detector_fn
from forward.errors import InputError
from forward.grid import Grid
from forward.potentials import make_potential_fn, slice_count
from forward.probe import check_probe, probe_spectrum, probe_waves
from forward.propagation import fresnel_propagator, multislice, transmission_function
from forward.specimen import Specimen

__all__ = ["Scan", "make_scan", "scan_positions", "source_blur", "make_stem_simulator"]


@pytree_dataclass
class Scan:
    """A rectangular grid of probe positions (abTEM ``GridScan``).

    Attributes:
        start: ``[2]`` first position (x, y) [Å] (leaf: a moved window does not recompile).
        end: ``[2]`` end corner (x, y) [Å]; excluded unless ``endpoint``.
        gpts: number of positions ``(sx, sy)`` (static).
        endpoint: whether ``end`` is the last position (static).
    """

    start: np.ndarray
    end: np.ndarray
    gpts: tuple[int, int] = static_field()
    endpoint: bool = static_field(default=False)

    @property
    def sampling(self):
        """Scan step ``(dx, dy)`` [Å] (array of 2)."""
        n = jnp.asarray(self.gpts, dtype=jnp.float32) - (1.0 if self.endpoint else 0.0)
        return (jnp.asarray(self.end) - jnp.asarray(self.start)) / jnp.maximum(n, 1.0)


def make_scan(*, start=(0.0, 0.0), end, gpts=None, sampling=None, endpoint: bool = False) -> Scan:
    """A validated :class:`Scan` from ``start``/``end`` [Å] and either ``gpts`` or ``sampling`` [Å].

    With ``sampling``, ``gpts = ceil((end - start) / sampling)`` (plus one with ``endpoint``), as
    abTEM 1.0.11's ``Grid``; the step actually used is ``Scan.sampling``.
    """
    s = as_float_array(start, "scan start", (2,))
    e = as_float_array(end, "scan end", (2,))
    if (e <= s).any():
        raise InputError(
            f"scan end {e.tolist()} Å must exceed scan start {s.tolist()} Å along x and y; "
            "swap them or widen the window"
        )
    if (gpts is None) == (sampling is None):
        raise InputError("make_scan needs exactly one of gpts (positions per axis) or sampling [Å]")
    if gpts is not None:
        g = np.broadcast_to(np.asarray(gpts), (2,))
        if any(int(x) != x or x < 1 for x in g.tolist()):
            raise InputError(f"scan gpts must be positive integers, got {gpts!r}")
        n = (int(g[0]), int(g[1]))
    else:
        d = np.broadcast_to(as_float_array(sampling, "scan sampling"), (2,))
        if (d <= 0).any():
            raise InputError(f"scan sampling must be positive [Å], got {sampling!r}")
        n = tuple(int(math.ceil(float(x) / float(y) - 1e-9)) + int(endpoint) for x, y in zip(e - s, d))
    if endpoint and min(n) < 2:
        raise InputError(f"a scan with endpoint=True needs at least 2 positions per axis, got {n}")
    return Scan(start=s, end=e, gpts=n, endpoint=bool(endpoint))


def scan_positions(scan: Scan):
    """Probe positions ``[sx, sy, 2]`` (x, y) [Å], indexed ``[x, y]`` like the image."""
    step = scan.sampling
    start = jnp.asarray(scan.start, dtype=jnp.float32)
    ix = jnp.arange(scan.gpts[0], dtype=jnp.float32)
    iy = jnp.arange(scan.gpts[1], dtype=jnp.float32)
    x = start[0] + ix * step[0]
    y = start[1] + iy * step[1]
    xx = jnp.broadcast_to(x[:, None], scan.gpts)
    yy = jnp.broadcast_to(y[None, :], scan.gpts)
    return jnp.stack([xx, yy], axis=-1)


def _gaussian_kernel_matrix(n: int, sigma_px, images: int = 3):
    """Circulant ``[n, n]`` matrix of scipy's truncated Gaussian (``truncate=4``) with wrap.

    Offsets ``i - j + m n`` for ``|m| <= images`` are all summed, so a kernel wider than the scan
    wraps round as ``scipy.ndimage`` does (exact while ``4 sigma < (images + 1/2) n``).
    """
    i = np.arange(n)
    m = np.arange(-images, images + 1)
    d = jnp.asarray((i[:, None, None] - i[None, :, None] + n * m[None, None, :]).astype(np.float32))
    s = jnp.asarray(sigma_px, dtype=jnp.float32)
    positive = s > 0
    s_safe = jnp.where(positive, s, 1.0)
    radius = jnp.floor(4.0 * s_safe + 0.5)
    w = jnp.sum(jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / s_safe) ** 2), 0.0), axis=-1)
    w = w / jnp.sum(w, axis=1, keepdims=True)
    return jnp.where(positive, w, jnp.asarray(np.eye(n, dtype=np.float32)))


def source_blur(image, source_size, scan_sampling):
    """Blur a scanned signal ``[sx, sy, ...]`` by a Gaussian source of sigma ``source_size`` [Å].

    The incoherent source image convolves the STEM image (Kirkland 2010, sec. 5.5; Dwyer et al.,
    Appl. Phys. Lett. 93 (2008) 021115); this is abTEM 1.0.11's ``Images.gaussian_filter``
    (sigma in scan pixels = size / step, periodic boundary, truncated at 4 sigma). Differentiable
    in ``source_size``; ``source_size = 0`` is the identity.
    """
    img = jnp.asarray(image)
    d = jnp.asarray(scan_sampling, dtype=jnp.float32)
    kx = _gaussian_kernel_matrix(img.shape[0], source_size / d[0])
    ky = _gaussian_kernel_matrix(img.shape[1], source_size / d[1])
    return jnp.einsum("ia,jb,ab...->ij...", kx, ky, img)


def _concrete(x):
    """``float(x)`` for concrete input, ``None`` for tracers (validation is skipped under jit)."""
    if isinstance(x, jax.core.Tracer):
        return None
    return float(np.asarray(x))


def make_stem_simulator(
    grid: Grid,
    thickness: float,
    slice_thickness: float,
    scan: Scan,
    *,
    parametrization: str = "lobato",
    projection: str = "infinite",
    species=None,
    soft_aperture: bool = True,
    batch_size: int = 32,
    cbed_crop: str | float = "cutoff",
    cbed_bin: int = 1,
    checkpoint: bool = False,
    potential_fn: Callable[[Specimen], jnp.ndarray] | None = None,
    devices=None,
) -> Callable[[Specimen, BeamCondition], jnp.ndarray]:
    """A pure ``simulate(specimen, beam)`` for a STEM scan by multislice.

    Args:
        grid: simulation grid; its extent equals the specimen cell in x and y.
        thickness: specimen thickness [Å]; slice_thickness: requested slice thickness [Å].
        scan: :class:`Scan` of probe positions (closed over; use :mod:`forward.prism` for cheap
            new windows).
        parametrization, projection, species: passed to :func:`forward.potentials.make_potential_fn`.
        soft_aperture: abTEM's soft aperture edge (abTEM's default) or a hard edge.
        batch_size: probe positions per multislice batch (memory ~ batch x nx x ny x 8 bytes x 4).
        cbed_crop: 4D-STEM pattern crop (:data:`forward.detectors.CBED_CROPS`) or a maximum angle
            [mrad] (converted to pixels at the beam energy of each eager call; a traced energy
            cannot be, so call the simulator eagerly or crop with a string).
        cbed_bin: 4D-STEM binning factor per axis; the pattern layout and its angular sampling are
            :func:`forward.detectors.cbed_geometry` ``(grid, energy, cbed_crop, cbed_bin)``.
        checkpoint: recompute each batch and slice in the backward pass (bounded memory for grad).
        potential_fn: ``specimen -> [n_slices, nx, ny]`` [V Å] replacing the default
            :func:`forward.potentials.make_potential_fn` (e.g. a frozen-phonon or precomputed
            potential); its slices must be ``thickness / n_slices`` thick.
        devices: optional sequence of JAX devices to split the probe batches over
            (``jax.shard_map``): several GPUs, or one XLA host device per CPU core
            (``--xla_force_host_platform_device_count``). ``None``: the default device.

    Returns:
        ``simulate(specimen, beam)`` -> ``[sx, sy]`` / ``[sx, sy, segment]`` / ``[sx, sy, kx, ky]``
        by ``beam.detector.mode``. jit/vmap/grad-able (gradients w.r.t. atom x, y positions,
        aberrations, source size, tilt). Concrete input is validated (sampling vs. probe and
        detector angles, grid vs. probe size); traced input is not.
    """
    if not isinstance(scan, Scan):
        raise InputError(f"scan must be a forward.stem.Scan (see make_scan), got {type(scan).__name__}")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    custom = potential_fn is not None
    # Built once here so that bad geometry (slices thicker than the specimen...) fails early.
    default_fn = make_potential_fn(grid, thickness, slice_thickness, parametrization, projection, species=species)
    _, dz = slice_count(float(thickness), float(slice_thickness))
    n_pos = scan.gpts[0] * scan.gpts[1]
    bs = min(int(batch_size), n_pos)
    n_dev = 1 if devices is None else len(devices)
    if n_dev < 1:
        raise InputError("devices must be None or a non-empty sequence of jax devices")
    n_batches = -(-n_pos // (bs * n_dev)) * n_dev
    mesh = None if devices is None else jax.sharding.Mesh(np.asarray(devices), ("positions",))

    def run(pot_fn, crop_energy, specimen: Specimen, beam: BeamCondition):
        lam = wavelength(beam.energy)
        detect = make_detector_fn(grid, beam.detector, cbed_crop=cbed_crop, cbed_bin=cbed_bin, energy=crop_energy)
        trans = transmission_function(pot_fn(specimen), beam.energy, grid=grid)
        prop = fresnel_propagator(grid, lam, dz, beam.tilt)
        spectrum = probe_spectrum(grid, beam, soft=soft_aperture)
        pos = scan_positions(scan).reshape(n_pos, 2)
        pos = jnp.concatenate([pos, jnp.broadcast_to(pos[-1:], (n_batches * bs - n_pos, 2))])

        def one_batch(p, trans, prop, spectrum, beam, lam):
            waves = probe_waves(grid, spectrum, p)
            psi = multislice(waves, trans[:-1], prop, checkpoint=checkpoint)
            exit_k = jnp.fft.fft2(psi * trans[-1][None], axes=(-2, -1)) * prop[None]
            intensity = jnp.real(exit_k) ** 2 + jnp.imag(exit_k) ** 2
            return detect(intensity, beam.detector, lam)

        fn = jax.checkpoint(one_batch) if checkpoint else one_batch
        out = _sharded_map(fn, pos.reshape(n_batches, bs, 2), (trans, prop, spectrum, beam, lam), mesh)
        out = out.reshape((n_batches * bs,) + out.shape[2:])[:n_pos]
        out = out.reshape(scan.gpts + out.shape[1:])
        return source_blur(out, beam.source_size, scan.sampling)

    @functools.lru_cache(maxsize=8)
    def compiled(spc, crop_energy):
        if custom:
            pot_fn = potential_fn
        elif spc == species:
            pot_fn = default_fn
        else:
            pot_fn = make_potential_fn(grid, thickness, slice_thickness, parametrization, projection, species=spc)
        return jax.jit(functools.partial(run, pot_fn, crop_energy))

    if isinstance(cbed_bin, bool) or int(cbed_bin) != cbed_bin or int(cbed_bin) < 1:
        raise InputError(f"4D-STEM bin factor must be a positive integer, got {cbed_bin!r}")
    angle_crop = not isinstance(cbed_crop, str)

    def simulate(specimen: Specimen, beam: BeamCondition):
        _validate(grid, beam)
        _check_cell(grid, specimen)
        crop_energy = None
        if angle_crop and beam.detector.mode == "4dstem":
            crop_energy = _concrete(beam.energy)
            if crop_energy is None:
                raise InputError(
                    f"a 4D-STEM crop given as an angle ({cbed_crop!r} mrad) is converted to pixels at the "
                    "beam energy, which is traced here (inside jit/vmap/grad): call the simulator "
                    "eagerly, or crop with 'cutoff', 'valid' or 'full'"
                )
        return compiled(species if custom else _species(specimen, species), crop_energy)(specimen, beam)

    return simulate


def _sharded_map(fn, xs, args, mesh):
    """``lax.map(lambda x: fn(x, *args), xs)``; with a mesh, the leading axis of ``xs`` (a
    multiple of the device count) is split over its devices (``jax.shard_map``), ``args``
    replicated."""

    def body(xs, *args):
        return jax.lax.map(lambda x: fn(x, *args), xs)

    if mesh is None:
        return body(xs, *args)
    spec = jax.sharding.PartitionSpec
    in_specs = (spec(mesh.axis_names[0]),) + (spec(),) * len(args)
    return jax.shard_map(
        body, mesh=mesh, in_specs=in_specs, out_specs=spec(mesh.axis_names[0]), check_vma=False
    )(xs, *args)


def _species(specimen: Specimen, species):
    """The static species tuple: as given, or read from concrete atomic numbers."""
    if species is not None:
        return tuple(sorted({int(z) for z in species}))
    if isinstance(specimen.numbers, jax.core.Tracer):
        raise InputError(
            "the atomic numbers are traced (inside jit/vmap/grad), so the set of species is not "
            "known: pass species=(Z1, Z2, ...) to make_stem_simulator"
        )
    return tuple(int(z) for z in np.unique(np.asarray(specimen.numbers)))


def _check_cell(grid: Grid, specimen: Specimen) -> None:
    cell = specimen.cell
    if isinstance(cell, jax.core.Tracer) or np.ndim(cell) != 1:
        return
    c = np.asarray(cell, dtype=np.float64)
    if not np.allclose(c[:2], grid.extent, rtol=1e-5, atol=1e-4):
        raise InputError(
            f"the grid extent {tuple(round(e, 4) for e in grid.extent)} Å does not match the specimen "
            f"cell {tuple(round(float(x), 4) for x in c[:2])} Å in x, y: build the grid with "
            "make_grid(extent=cell[:2], ...)"
        )


def _validate(grid: Grid, beam: BeamCondition) -> None:
    e = _concrete(beam.energy)
    sa = _concrete(beam.semiangle_cutoff)
    if e is None or sa is None:
        return
    check_probe(grid, beam)
    if _concrete(beam.detector.outer) is not None:
        check_detector(grid, beam.detector, e)
