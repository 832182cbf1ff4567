"""HRTEM imaging: objective-lens CTF with partial-coherence envelopes, detector MTF, camera binning.

The image of an exit wave ``psi`` in the quasi-coherent approximation (Kirkland 2010, sec. 3.3 and
eq. 3.62-3.66; abTEM 1.0.11 ``CTF``, ``TemporalEnvelope``, ``SpatialEnvelope``):

    I(r) = |IFFT[ H(k) FFT[psi](k) ]|^2,   H = A(alpha) exp(-i chi) E_t E_s

- ``chi``: Krivanek aberration phase (:func:`forward.transfer.aberration_phase`), alpha = lambda |k|.
- ``A``: objective aperture of semiangle ``beam.semiangle_cutoff`` (soft edge, as abTEM's CTF
  default; 0 means no aperture).
- Temporal envelope (focal spread Delta [Å]): ``E_t = exp(-(pi Delta alpha^2 / (2 lambda))^2)``.
- Spatial envelope (illumination semiangle spread theta [rad]):
  ``E_s = exp(-(theta/2)^2 (|d chi / d alpha|^2 + |(1/alpha) d chi / d phi|^2))``
  (the gradient of chi is taken by autodiff, so every aberration order is included).

The image is intensity relative to the incident beam (the plane wave has unit amplitude, so
vacuum = 1): the expected electrons per camera pixel are ``I x dose [e-/Å²] x pixel area [Å²]``,
the convention :mod:`forward.noise` and :mod:`inference` use. Arrays are indexed ``[x, y]``.

The exit wave does not depend on the imaging aberrations, so :class:`HRTEMSimulator` splits
``exit_wave`` from ``image_from_exit_wave``: a new defocus costs one FFT pair (DESIGN 3).

Thickness is a differentiable input: ``simulate(specimen, beam, thickness)`` puts the exit plane at
a continuous depth [Å] within the sliced specimen, the last slice crossed in part
(:func:`forward.propagation.multislice_to_depth`); without it the whole specimen is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from forward.beam import Aberrations, BeamCondition
from forward.constants import wavelength
from forward.errors import InputError
from forward.grid import Grid
from forward.guards import check_hrtem
from forward.potentials import make_potential_fn, slice_count
from forward.propagation import fresnel_propagator, multislice_potential, multislice_to_depth
from forward.reciprocal import polar_frequencies
from forward.specimen import Specimen
from forward.transfer import aberration_phase, aperture
from forward.waves import plane_wave

__all__ = [
    "temporal_envelope",
    "spatial_envelope",
    "ctf",
    "detector_mtf",
    "resample_to_camera",
    "HRTEMSimulator",
    "make_hrtem_simulator",
    "make_optics_image_fn",
]


def temporal_envelope(alpha, wavelength, focal_spread):
    """Temporal-coherence envelope ``exp(-(pi Delta alpha^2 / (2 lambda))^2)`` (Kirkland 2010,
    eq. 3.66 with the focal spread Delta [Å]; abTEM 1.0.11 ``TemporalEnvelope``).

    Args:
        alpha: scattering angles [rad], e.g. ``[nx, ny]``.
        wavelength: [Å].
        focal_spread: standard deviation of the defocus [Å].
    """
    a = jnp.asarray(alpha)
    return jnp.exp(-((0.5 * jnp.pi / wavelength * focal_spread * a**2) ** 2))


def spatial_envelope(alpha, phi, wavelength, aberrations: Aberrations, angular_spread):
    """Spatial-coherence envelope for a Gaussian spread of illumination angles.

    ``exp(-(theta/2)^2 (|d chi/d alpha|^2 + |(1/alpha) d chi/d phi|^2))`` with theta the angular
    spread [rad] (abTEM 1.0.11 ``SpatialEnvelope``; Kirkland 2010, eq. 3.63 generalised to the
    full gradient of chi).

    Args:
        alpha, phi: polar angles [rad] ``[nx, ny]``.
        wavelength: [Å].
        aberrations: :class:`forward.beam.Aberrations`.
        angular_spread: [mrad].
    """
    a = jnp.asarray(alpha)
    p = jnp.asarray(phi)
    ones = jnp.ones_like(a)
    _, dchi_da = jax.jvp(lambda x: aberration_phase(x, p, wavelength, aberrations), (a,), (ones,))
    _, dchi_dp = jax.jvp(lambda x: aberration_phase(a, x, wavelength, aberrations), (p,), (ones,))
    positive = a > 0
    safe = jnp.where(positive, a, 1.0)
    dchi_dp = jnp.where(positive, dchi_dp / safe, 0.0)
    theta = jnp.asarray(angular_spread) * 1e-3
    return jnp.exp(-((theta / 2) ** 2) * (dchi_da**2 + dchi_dp**2))


def ctf(grid: Grid, beam: BeamCondition, *, soft_aperture: bool = True) -> jnp.ndarray:
    """The objective-lens transfer function ``H(k)`` ``[nx, ny]`` complex64 (FFT order).

    ``A exp(-i chi) E_t E_s`` from ``beam.aberrations``, ``beam.semiangle_cutoff`` [mrad] (0: no
    aperture), ``beam.focal_spread`` [Å] and ``beam.angular_spread`` [mrad]; every factor is
    differentiable in the beam parameters.
    """
    lam = wavelength(jnp.asarray(beam.energy, dtype=jnp.float32))
    alpha, phi = polar_frequencies(grid, lam)
    chi = aberration_phase(alpha, phi, lam, beam.aberrations)
    env = temporal_envelope(alpha, lam, beam.focal_spread)
    env = env * spatial_envelope(alpha, phi, lam, beam.aberrations, beam.angular_spread)
    cutoff = jnp.asarray(beam.semiangle_cutoff, dtype=jnp.float32)
    ang = (lam / grid.extent[0] * 1e3, lam / grid.extent[1] * 1e3)
    safe_cutoff = jnp.where(cutoff > 0, cutoff, 1.0)
    ap = aperture(alpha, safe_cutoff, soft=soft_aperture, phi=phi, angular_sampling=ang)
    ap = jnp.where(cutoff > 0, ap, 1.0)
    amp = (ap * env).astype(jnp.float32)
    return jax.lax.complex(amp * jnp.cos(chi), -amp * jnp.sin(chi))


def detector_mtf(gpts: tuple[int, int], mtf) -> jnp.ndarray:
    """Camera MTF ``(a - b) / (1 + (q / 2c)^d) + b`` on a camera grid ``[nx, ny]`` (FFT order).

    q is the spatial frequency in units of the camera's Nyquist frequency (Thust, Ultramicroscopy
    109 (2009) 1451, eq. 6; :class:`forward.beam.Detector`). ``mtf`` = ``(a, b, c, d)``;
    ``(1, 1, 1, 1)`` gives 1 everywhere.
    """
    fx = np.fft.fftfreq(gpts[0])
    fy = np.fft.fftfreq(gpts[1])
    q = jnp.asarray((2.0 * np.sqrt(fx[:, None] ** 2 + fy[None, :] ** 2)).astype(np.float32))
    m = jnp.asarray(mtf, dtype=jnp.float32)
    a, b, c, d = m[0], m[1], m[2], m[3]
    return (a - b) / (1.0 + (q / (2.0 * c)) ** d) + b


def _fourier_resample(image, gpts: tuple[int, int]) -> jnp.ndarray:
    """Band-limited resampling of a real image to ``gpts`` by cropping or zero-padding its
    spectrum; the mean over pixels (the relative intensity) is conserved exactly."""
    nx, ny = image.shape[-2:]
    mx, my = gpts
    spec = jnp.fft.fftshift(jnp.fft.fft2(image, axes=(-2, -1)), axes=(-2, -1))

    def fit(spec, n, m, axis):
        if m == n:
            return spec
        if m < n:
            start = n // 2 - m // 2
            return jax.lax.slice_in_dim(spec, start, start + m, axis=axis)
        pad = [(0, 0)] * spec.ndim
        pad[axis] = (m // 2 - n // 2, m - n - (m // 2 - n // 2))
        return jnp.pad(spec, pad)

    spec = fit(spec, nx, mx, spec.ndim - 2)
    spec = fit(spec, ny, my, spec.ndim - 1)
    spec = jnp.fft.ifftshift(spec, axes=(-2, -1)) * ((mx * my) / (nx * ny))
    return jnp.fft.ifft2(spec, axes=(-2, -1)).real


def resample_to_camera(image, camera_gpts: tuple[int, int]) -> jnp.ndarray:
    """An image ``[..., nx, ny]`` (intensity relative to the beam) on the camera grid ``camera_gpts``.

    When the camera pixels are whole multiples of the simulation pixels the intensity is averaged
    over ``fx x fy`` blocks; otherwise the image is Fourier-resampled (band-limited). Both conserve
    the mean, so the result stays relative to the incident beam (vacuum = 1) and a camera pixel
    receives ``I x dose x (its area)`` electrons: the dose through the cell is unchanged.
    """
    img = jnp.asarray(image)
    nx, ny = img.shape[-2:]
    mx, my = camera_gpts
    if (mx, my) == (nx, ny):
        return img
    if nx % mx == 0 and ny % my == 0:
        fx, fy = nx // mx, ny // my
        return img.reshape(img.shape[:-2] + (mx, fx, my, fy)).mean(axis=(-3, -1))
    return _fourier_resample(img, (mx, my))


def _apply_mtf(image, mtf) -> jnp.ndarray:
    h = detector_mtf(image.shape[-2:], mtf)
    h = h.reshape((1,) * (image.ndim - 2) + h.shape)
    return jnp.fft.ifft2(jnp.fft.fft2(image, axes=(-2, -1)) * h, axes=(-2, -1)).real


def _check_depth(thickness, total: float) -> None:
    """A concrete exit-plane depth must lie in ``(0, total]`` [Å] (traced values are not checked)."""
    if isinstance(thickness, jax.core.Tracer):
        return
    d = np.asarray(thickness, dtype=np.float64)
    if d.ndim != 0 or not np.isfinite(d) or d <= 0 or d > total * (1 + 1e-6):
        raise InputError(
            f"thickness must be a single number in (0, {total:g}] Å (the depth the simulator slices), "
            f"got {thickness!r}; build the simulator with a larger thickness to go deeper"
        )


@dataclasses.dataclass(frozen=True)
class HRTEMSimulator:
    """The pure functions of one HRTEM configuration (built by :func:`make_hrtem_simulator`).

    Calling it is ``simulate`` (``jax.jit(sim)`` works). All three functions are jit/vmap/grad-able
    (their numeric cores are compiled once per shape so that eager calls are fast too). It holds
    closures, so it does not pickle: build it where it runs (inside a Ray task, DESIGN 6) and ship
    the grid, thickness and options instead.

    Attributes:
        simulate: ``(specimen, beam, thickness=None) -> image [mx, my]``, intensity relative to the
            incident beam.
        exit_wave: ``(specimen, beam, thickness=None) -> [nx, ny]`` complex exit wave (depends on
            energy and tilt only, not on the imaging aberrations). ``thickness`` [Å] in
            ``(0, n_slices * slice_thickness]`` (may be traced: differentiable) puts the exit
            plane inside the specimen, the last slice crossed in part
            (:func:`forward.propagation.multislice_to_depth`); ``None``: the whole specimen.
        image_from_exit_wave: ``(exit_wave, beam) -> image [mx, my]`` (CTF, envelopes,
            camera resampling and MTF).
        grid: the simulation grid.
        n_slices: number of slices; ``slice_thickness``: their thickness [Å].
    """

    simulate: Callable[..., jnp.ndarray]
    exit_wave: Callable[..., jnp.ndarray]
    image_from_exit_wave: Callable[[jnp.ndarray, BeamCondition], jnp.ndarray]
    grid: Grid
    n_slices: int
    slice_thickness: float

    def __call__(self, specimen: Specimen, beam: BeamCondition, thickness=None) -> jnp.ndarray:
        return self.simulate(specimen, beam, thickness)


def make_hrtem_simulator(
    grid: Grid,
    thickness: float,
    slice_thickness: float,
    *,
    parametrization: str = "lobato",
    projection: str = "infinite",
    species: Sequence[int] | None = None,
    camera_gpts: int | Sequence[int] | None = None,
    soft_aperture: bool = True,
    checkpoint: bool = False,
) -> HRTEMSimulator:
    """An HRTEM simulator: plane wave, multislice, objective lens, camera.

    Args:
        grid: simulation grid (extent = specimen cell in x, y); choose it with
            ``make_grid(extent=cell[:2], sampling=...)``, which rounds to FFT-friendly sizes.
        thickness: specimen thickness [Å]; slices: ``ceil(thickness / slice_thickness)`` equal.
        slice_thickness: requested slice thickness [Å].
        parametrization: ``"lobato"`` or ``"kirkland"``.
        projection: ``"infinite"`` or ``"finite"`` (see :func:`forward.potentials.make_potential_fn`).
        species: atomic numbers the specimens may contain; needed under ``jit``/``vmap``/``grad``
            (see :func:`forward.potentials.make_potential_fn`).
        camera_gpts: camera pixels ``(mx, my)`` covering the cell (default: the simulation grid).
        soft_aperture: soft-edged objective aperture (abTEM's CTF default).
        checkpoint: rematerialise each slice in reverse mode (less memory for gradients).

    Returns:
        :class:`HRTEMSimulator`.
    """
    potential_fn = make_potential_fn(grid, thickness, slice_thickness, parametrization, projection, species=species)
    n_slices, dz = slice_count(float(thickness), float(slice_thickness))
    if camera_gpts is None:
        cam = tuple(grid.gpts)
    else:
        c = np.atleast_1d(np.asarray(camera_gpts))
        if c.size == 1:
            c = np.repeat(c, 2)
        if c.shape != (2,) or np.any(c < 1) or np.any(c != np.round(c)):
            raise InputError(f"camera_gpts must be a positive integer or a pair, got {camera_gpts!r}")
        cam = (int(c[0]), int(c[1]))
        if cam[0] > grid.gpts[0] or cam[1] > grid.gpts[1]:
            raise InputError(
                f"camera_gpts {cam} is finer than the simulation grid {grid.gpts}: simulate on a "
                "finer grid (smaller sampling) or use fewer camera pixels"
            )
    t = float(thickness)

    def _propagate(V, energy, tilt):
        energy = jnp.asarray(energy, dtype=jnp.float32)
        prop = fresnel_propagator(grid, wavelength(energy), dz, tilt=tilt)
        return multislice_potential(plane_wave(grid), V, energy, prop, grid=grid, checkpoint=checkpoint)

    def _image(psi, beam: BeamCondition):
        H = ctf(grid, beam, soft_aperture=soft_aperture)
        img_wave = jnp.fft.ifft2(jnp.fft.fft2(psi, axes=(-2, -1)) * H, axes=(-2, -1))
        image = img_wave.real**2 + img_wave.imag**2
        image = resample_to_camera(image, cam)
        return _apply_mtf(image, beam.detector.mtf)

    def _propagate_to(V, energy, tilt, depth):
        energy = jnp.asarray(energy, dtype=jnp.float32)
        return multislice_to_depth(
            plane_wave(grid), V, energy, wavelength(energy), dz, depth, tilt=tilt, grid=grid, checkpoint=checkpoint
        )

    # Compiled cores so that eager calls are fast; inside an outer jit/vmap/grad they are inlined.
    # The checks run outside them, on concrete values only.
    propagate_c = jax.jit(_propagate)
    propagate_to_c = jax.jit(_propagate_to)
    image_c = jax.jit(_image)

    def exit_wave(specimen: Specimen, beam: BeamCondition, thickness=None) -> jnp.ndarray:
        check_hrtem(grid, specimen, beam, t)
        if thickness is None:
            return propagate_c(potential_fn(specimen), beam.energy, beam.tilt)
        _check_depth(thickness, t)
        return propagate_to_c(potential_fn(specimen), beam.energy, beam.tilt, thickness)

    def image_from_exit_wave(psi, beam: BeamCondition) -> jnp.ndarray:
        return image_c(psi, beam)

    def simulate(specimen: Specimen, beam: BeamCondition, thickness=None) -> jnp.ndarray:
        return image_from_exit_wave(exit_wave(specimen, beam, thickness), beam)

    return HRTEMSimulator(simulate, exit_wave, image_from_exit_wave, grid, n_slices, dz)


def make_optics_image_fn(grid: Grid, beam: BeamCondition, camera_gpts=None, *, soft_aperture: bool = True) -> Callable:
    """``image(psi, theta) -> [mx, my]``: the HRTEM image of exit wave ``psi`` under ``beam`` with
    the optics offset by ``theta = (d_defocus, a12, b12)`` [Å] — the defocus ``+ d_defocus`` (C10
    ``- d_defocus``) and a two-fold astigmatism added in Cartesian form,
    ``C12 cos(2 (phi - phi12)) = a12 cos 2 phi + b12 sin 2 phi`` with ``a12 = C12 cos 2 phi12``,
    ``b12 = C12 sin 2 phi12`` (smooth through C12 = 0, where the polar angle is undefined), so
    chi gains ``(pi / lambda) alpha^2 (a12 cos 2 phi + b12 sin 2 phi)`` (Krivanek et al. 1999, eq. 1).

    One FFT pair per call (DESIGN 3): differentiable in ``theta`` (and ``psi``), vmap-able. The
    spatial-coherence envelope is the nominal beam's with the shifted defocus; the added
    astigmatism's contribution to it is left out (at the 0.1 mrad angular spreads of HRTEM it
    changes the envelope by < 1e-3 for C12 of tens of Å).
    """
    from forward._pytree import replace as _replace

    lam = wavelength(beam.energy)
    alpha, phi = polar_frequencies(grid, lam)
    q = (jnp.pi / lam) * alpha**2
    c2, s2 = q * jnp.cos(2.0 * phi), q * jnp.sin(2.0 * phi)
    cam = tuple(grid.gpts) if camera_gpts is None else tuple(int(v) for v in np.broadcast_to(camera_gpts, (2,)))
    c10 = jnp.asarray(beam.aberrations.C10, jnp.float32)

    def image(psi, theta):
        theta = jnp.asarray(theta, jnp.float32)
        b = _replace(beam, aberrations=_replace(beam.aberrations, C10=c10 - theta[0]))
        phase = theta[1] * c2 + theta[2] * s2
        H = ctf(grid, b, soft_aperture=soft_aperture) * jax.lax.complex(jnp.cos(phase), -jnp.sin(phase))
        w = jnp.fft.ifft2(jnp.fft.fft2(psi, axes=(-2, -1)) * H, axes=(-2, -1))
        return _apply_mtf(resample_to_camera(w.real**2 + w.imag**2, cam), beam.detector.mtf)

    return image
