"""Frames of any field of view: the host lattice registered, every defect site enumerated and
scored on a window of the frame around it.

The library is per-defect supercells of one host (:func:`analyse_library`): the host is the
hypothesis the others differ from by fewest atoms (or the one named), each other hypothesis's
*site* is the centroid of the atoms where it differs from the host, and sites equivalent under the
host's primitive translations form one *site class* ("Mo column", "S column"). The frame is
registered against the tiled host image (:mod:`inference.lattice`); every site of each class
inside the frame, at least a window radius from its edges, is scored against the host and the
hypotheses of its class (:func:`score_field_of_view`):

- each hypothesis's image is simulated once, periodic on its supercell, and evaluated exactly at
  the window's pixels through the registered map by its Fourier series (the image is band-limited,
  so this is exact interpolation); the defect's periodic copies are a supercell away, which
  :func:`window_geometry` checks against the window radius plus the halo the optics need;
- per site and hypothesis the local scale and background are marginalised by the Laplace step of
  :mod:`inference.newton` (the scorers' one Newton-Laplace core), with priors centred on the
  frame's registered scale and background;
- a site is a priori the host with probability ``1 - defect_prior``; the rest is shared by the
  class's hypotheses in proportion to their prior weights;
- sites whose window (plus halo) overlaps a decided defect's window are flagged ``near_defect``
  with the defect's index: they were scored as if their neighbours were host;
- the absolute fit check: the Poisson deviance of the best fit against its mean and variance under
  that fit (a z-score, one-sided p-value); below ``fit_alpha`` the site is ``unexplained`` and
  never decided; a window with less than :data:`OFF_SPECIMEN_RATIO` of the host's expected counts
  is ``off_specimen`` (vacuum, a hole), never a vacancy.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from forward import InputError
from inference.windows import class_evidence, concat_evidence, grad2

__all__ = ["LibraryGeometry", "analyse_library", "ctf_delocalisation", "host_symmetries", "transformed_series", "window_geometry", "bad_pixel_mask", "score_field_of_view", "FieldOfViewScorer",
           "periodic_images", "OFF_SPECIMEN_RATIO", "DEFECT_PRIOR", "DECIDE_P"]  # fmt: skip

#: A window holding less than this fraction of the host's expected counts is off the specimen.
OFF_SPECIMEN_RATIO = 0.5
#: The default prior probability that a site is not the host.
DEFECT_PRIOR = 0.02
#: A site is decided when its best hypothesis has at least this posterior.
DECIDE_P = 0.99
#: A hypothesis differing from the host in more atoms than this is not a point defect of it.
MAX_DEFECT_ATOMS = 8
#: ... nor one whose differing atoms spread further than this from their centroid [Å].
MAX_DEFECT_SPREAD = 3.0


@dataclasses.dataclass(frozen=True)
class LibraryGeometry:
    """The host, its primitive lattice and each hypothesis's defect site.

    Attributes:
        host: index of the host hypothesis.
        lattice: ``[2, 2]`` primitive lattice vectors (columns) [Å].
        site: ``[H, 2]`` defect site of each hypothesis in its supercell [Å] (the host: nan).
        site_class: ``[H]`` class index per hypothesis (the host: -1).
        classes: per class ``(label, position [2] Å)``.
        changes: per hypothesis a short description of how it differs from the host.
        class_ops: per class ``(parent, G [2, 2], u [2] Å)``: the class's sites are the images of
            class ``parent``'s under the host symmetry ``r -> G r + u`` (a rotation or mirror about
            the beam axis that carries the host's atoms onto themselves, depth unchanged), and its
            members are ``parent``'s, their images transformed the same way. A library class is its
            own parent with ``G = 1, u = 0``; its images under the host's other symmetries that fall
            on sites the class does not hold (the second O column of SrTiO3 [001] under the
            four-fold axis) are added as classes, so that a defect is looked for on every site
            equivalent to its own, whichever of the equivalent maps the registration found.
    """

    host: int
    lattice: np.ndarray
    site: np.ndarray
    site_class: np.ndarray
    classes: tuple
    changes: tuple
    class_ops: tuple = ()

    def parent(self, c: int) -> int:
        """The library class whose members class ``c`` tests."""
        return int(self.class_ops[c][0]) if self.class_ops else c

    def members(self, c: int) -> list[int]:
        """Hypothesis indices of class ``c``'s defects (the host not included)."""
        p = self.parent(c)
        return [h for h in range(len(self.site_class)) if self.site_class[h] == p]


def _match(pos_a, num_a, pos_b, num_b, cell, tol=0.1):
    """For each atom of a, whether an atom of b of the same species sits within ``tol`` (periodic in x, y)."""
    d = pos_a[:, None, :] - pos_b[None, :, :]
    d[..., :2] -= np.round(d[..., :2] / cell[None, None, :2]) * cell[None, None, :2]
    close = np.linalg.norm(d, axis=-1) < tol
    return (close & (num_a[:, None] == num_b[None, :])).any(axis=1)


def _differences(host, other, cell):
    ph, nh = np.asarray(host.positions, float), np.asarray(host.numbers)
    po, no = np.asarray(other.positions, float), np.asarray(other.numbers)
    gone = ~_match(ph, nh, po, no, cell)
    new = ~_match(po, no, ph, nh, cell)
    return ph[gone], nh[gone], po[new], no[new]


def _primitive_lattice(spec, cell, tol=0.1):
    """The two shortest in-plane translations that map the host onto itself."""
    pos, num = np.asarray(spec.positions, float), np.asarray(spec.numbers)
    ref = int(np.argmin(np.bincount(num)[num]))  # an atom of the rarest species
    cands = []
    for j in np.flatnonzero(num == num[ref]):
        v = pos[j, :2] - pos[ref, :2]
        if abs(pos[j, 2] - pos[ref, 2]) > tol:
            continue
        v = v - np.round(v / cell[:2]) * cell[:2]
        for sx in (-1, 0, 1):
            for sy in (-1, 0, 1):
                w = v + np.array([sx * cell[0], sy * cell[1]])
                if np.linalg.norm(w) > 1e-6:
                    cands.append(w)
    cands.append(np.array([cell[0], 0.0]))
    cands.append(np.array([0.0, cell[1]]))
    cands = sorted(cands, key=lambda w: np.linalg.norm(w))
    shifted = pos.copy()
    good = []
    for w in cands:
        shifted[:, :2] = pos[:, :2] + w
        if _match(shifted, num, pos, num, cell, tol).all():
            good.append(w)
    a1 = good[0]
    a2 = next(w for w in good if abs(a1[0] * w[1] - a1[1] * w[0]) > 1e-3 * np.linalg.norm(a1) * np.linalg.norm(w))
    if a1[0] * a2[1] - a1[1] * a2[0] < 0:
        a2 = -a2
    return np.stack([a1, a2], axis=1)


def host_symmetries(spec, lattice, tol=0.1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(G [2, 2], u [2] Å)]``: the in-plane rotations and mirrors of the host's lattice
    (:func:`inference.lattice.lattice_point_group`) that, with some translation ``u``, carry every
    host atom onto one of the same element at the same depth (modulo the primitive lattice): the
    projected space group's point operations. The identity comes first."""
    from inference.lattice import lattice_point_group

    pos, num = np.asarray(spec.positions, float), np.asarray(spec.numbers)
    inv = np.linalg.inv(lattice)

    def wrapped(d):
        f = d @ inv.T
        return (f - np.round(f)) @ lattice.T

    ops = []
    for g in sorted(lattice_point_group(lattice), key=lambda g: (np.abs(g - np.eye(2)).max() > 1e-6, -np.linalg.det(g))):
        moved = pos[:, :2] @ g.T
        same = np.flatnonzero((num == num[0]) & (np.abs(pos[:, 2] - pos[0, 2]) < tol))
        for j in same:
            u = pos[j, :2] - moved[0]
            d = wrapped((moved + u)[:, None, :] - pos[None, :, :2])
            hit = (np.linalg.norm(d, axis=-1) < tol) & (num[:, None] == num[None, :]) \
                & (np.abs(pos[:, None, 2] - pos[None, :, 2]) < tol)  # fmt: skip
            if hit.any(axis=1).all():
                ops.append((g, wrapped(u)))
                break
    return ops


def _column_label(spec, xy, cell, tol=0.3):
    pos, num = np.asarray(spec.positions, float), np.asarray(spec.numbers)
    d = pos[:, :2] - xy[None, :]
    d -= np.round(d / cell[None, :2]) * cell[None, :2]
    near = np.linalg.norm(d, axis=1) < tol
    if not near.any():
        return f"interstitial ({xy[0]:.2f}, {xy[1]:.2f}) Å"
    from forward.elements import symbol as chemical_symbol

    return "-".join(sorted({chemical_symbol(int(z)) for z in num[near]})) + " column"


def analyse_library(hyps, host_id: str | None = None) -> LibraryGeometry:
    """The :class:`LibraryGeometry` of a :class:`hypotest.scoring.ScoringInput` (shared cell checked
    upstream). The host (unless ``host_id``) is the hypothesis periodic on a lattice finer than the
    supercell that the others differ from by fewest atoms. Errors name the hypothesis that is not a
    point defect of the host."""
    specs = hyps.specimens
    cell = np.asarray(specs[0].cell, float)
    n = len(specs)
    if host_id is not None:
        if host_id not in hyps.ids:
            raise InputError(f"--host {host_id!r} is not a hypothesis of the library: ids are {list(hyps.ids)}")
        host = hyps.ids.index(host_id)
    else:
        counts = np.zeros((n, n), int)
        for i in range(n):
            for j in range(n):
                if i != j:
                    a, _, b, _ = _differences(specs[i], specs[j], cell)
                    counts[i, j] = len(a) + len(b)
        # the host is periodic on a lattice finer than the supercell (a defect breaks that); among
        # those (or all, if none is), the one the others differ from by fewest atoms
        area = abs(cell[0] * cell[1])
        periodic = [i for i in range(n) if abs(np.linalg.det(_primitive_lattice(specs[i], cell))) < 0.99 * area]
        pool = periodic or list(range(n))
        host = min(pool, key=lambda i: (counts[i].sum(), i))
    lattice = _primitive_lattice(specs[host], cell)
    sites = np.full((n, 2), np.nan)
    changes = []
    for h in range(n):
        if h == host:
            changes.append("host")
            continue
        gp, gn, npos, nn = _differences(specs[host], specs[h], cell)
        pts = np.concatenate([gp[:, :2], npos[:, :2]])
        if len(pts) == 0:
            raise InputError(f"hypothesis {hyps.names[h]!r} ({hyps.ids[h]}) has the same atoms as the host "
                             f"{hyps.names[host]!r}: it names no defect site")  # fmt: skip
        d = pts - pts[0]
        pts = pts[0] + d - np.round(d / cell[None, :2]) * cell[None, :2]
        c = pts.mean(axis=0)
        spread = float(np.linalg.norm(pts - c, axis=1).max())
        if len(pts) > MAX_DEFECT_ATOMS or spread > MAX_DEFECT_SPREAD:
            raise InputError(
                f"hypothesis {hyps.names[h]!r} ({hyps.ids[h]}) differs from the host {hyps.names[host]!r} in "
                f"{len(pts)} atoms spread over {spread:.2f} Å: it is not a point defect of that host (at most "
                f"{MAX_DEFECT_ATOMS} atoms within {MAX_DEFECT_SPREAD:g} Å); give the host with --host or a library of "
                "one host's defects"
            )
        sites[h] = c
        from forward.elements import symbol as chemical_symbol

        out = "+".join(chemical_symbol(int(z)) for z in gn)
        inn = "+".join(chemical_symbol(int(z)) for z in nn)
        changes.append(f"{out or '-'} -> {inn or 'vacancy'}")
    inv = np.linalg.inv(lattice)
    classes, site_class = [], np.full(n, -1)
    for h in range(n):
        if h == host:
            continue
        for k, (_, ref) in enumerate(classes):
            f = inv @ (sites[h] - ref)
            if np.linalg.norm(lattice @ (f - np.round(f))) < 0.3:
                site_class[h] = k
                break
        else:
            site_class[h] = len(classes)
            classes.append((_column_label(specs[host], sites[h], cell), sites[h].copy()))
    # the classes' images under the host's symmetries, where they fall on sites no class holds
    ops = [(k, np.eye(2), np.zeros(2)) for k in range(len(classes))]
    for g, u in host_symmetries(specs[host], lattice)[1:]:
        for k in range(len(ops)):
            if ops[k][0] != k:
                continue
            r = g @ classes[k][1] + u
            if any(np.linalg.norm(lattice @ ((f := inv @ (r - ref)) - np.round(f))) < 0.3 for _, ref in classes):
                continue
            ang = math.degrees(math.atan2(g[1, 0], g[0, 0]))
            how = f"rotated {ang:.0f}°" if np.linalg.det(g) > 0 else f"mirrored at {ang / 2:.0f}°"
            classes.append((f"{classes[k][0]} ({how})", r - lattice @ np.floor(inv @ r + 1e-9)))
            ops.append((k, g, u))
    return LibraryGeometry(host=host, lattice=lattice, site=sites, site_class=site_class, classes=tuple(classes),
                           changes=tuple(changes), class_ops=tuple(ops))  # fmt: skip


def ctf_delocalisation(beam, n_radial: int = 256, n_azimuth: int = 72) -> float:
    """The largest image displacement [Å] of the objective lens: ``R = max_k |grad_k chi| / (2 pi)``
    over spatial frequencies ``|k| <= alpha / lambda`` (Lichte, Ultramicroscopy 38 (1991) 13; for
    defocus and Cs alone ``|C10 lambda k + C30 lambda^3 k^3|``). ``chi`` is
    :func:`forward.transfer.aberration_phase`, every aberration the beam holds, differentiated by
    autodiff: a Scherzer (over)focus that cancels Cs gives a small ``R``, the opposite focus a
    large one."""
    import jax
    import jax.numpy as jnp

    from forward.constants import wavelength
    from forward.transfer import aberration_phase

    lam = float(wavelength(float(beam.energy)))
    kmax = float(beam.semiangle_cutoff) * 1e-3 / lam
    kr, ph = np.meshgrid(np.linspace(1e-6, kmax, n_radial), np.linspace(0, 2 * np.pi, n_azimuth, endpoint=False))
    k = jnp.asarray(np.stack([kr * np.cos(ph), kr * np.sin(ph)], -1).reshape(-1, 2))

    def chi(kv):
        return aberration_phase(lam * jnp.linalg.norm(kv), jnp.arctan2(kv[1], kv[0]), lam, beam.aberrations)

    grad = jax.vmap(jax.grad(chi))(k)
    return float(jnp.max(jnp.linalg.norm(grad, axis=-1))) / (2 * np.pi)


def window_geometry(beam, lattice, cell) -> dict:
    """Window radius and halo [Å] from the optics, checked against the supercell.

    STEM: the probe's Airy radius ``r_p = 0.61 lambda / alpha``; the window reaches the nearest
    neighbouring column (the shortest host translation / sqrt 3 for a honeycomb, bounded below by
    ``2 r_p``) and the halo is ``2 r_p`` (the probe tails). HRTEM: the CTF delocalisation
    ``R = max_k |grad_k chi| / 2 pi`` up to the aperture (Lichte, Ultramicroscopy 38 (1991) 13;
    ``|C10 lambda k + C30 lambda^3 k^3|`` for defocus and Cs alone) is added to both
    (:func:`ctf_delocalisation`)."""
    from forward.constants import wavelength

    lam = float(wavelength(float(beam.energy)))
    alpha = float(beam.semiangle_cutoff) * 1e-3
    r_p = 0.61 * lam / alpha
    d_nn = float(min(np.linalg.norm(lattice, axis=0))) / math.sqrt(3)
    radius = max(d_nn, 2 * r_p)
    halo = 2 * r_p
    what = f"probe Airy radius {r_p:.2f} Å"
    if beam.detector.mode == "hrtem":
        deloc = ctf_delocalisation(beam)
        radius += deloc
        halo += deloc
        what = f"resolution {r_p:.2f} Å, CTF delocalisation {deloc:.2f} Å"
    span = float(min(cell[0], cell[1]))
    if radius + halo > span:
        raise InputError(
            f"the window ({radius:.2f} Å radius) plus its halo ({halo:.2f} Å; {what}) is {radius + halo:.2f} Å, more "
            f"than the supercell's shortest period {span:.2f} Å: a defect's periodic copy would show in the window; "
            f"build the library with a supercell at least {radius + halo:.1f} Å across"
        )
    return {"radius_A": radius, "halo_A": halo, "basis": what, "nearest_column_A": d_nn}


def transformed_series(series, g, u):
    """The image ``I'(r) = I(G^-1 (r - u))`` of a :class:`inference.lattice.HostSeries` carried by
    the orthogonal map ``r -> G r + u``: ``g' = G g``, ``c' = c exp(-2 pi i g' . u)`` (exact)."""
    if np.allclose(g, np.eye(2)) and not np.any(u):
        return series
    gp = series.g @ np.asarray(g).T
    return dataclasses.replace(series, g=gp, c=series.c * np.exp(-2j * np.pi * (gp @ np.asarray(u))))


def bad_pixel_mask(frame, read_noise: float = 0.0, band_px=None) -> tuple[np.ndarray, dict]:
    """``(mask, counts)``: True where a pixel is scored; NaN/inf, negative, dead (0 where the 3x3
    median is > 25 counts, a Poisson probability < 1e-11), hot (over median + 12 sqrt(median + 1)
    + 10) and saturated (the frame's maximum held by >= 4 pixels) pixels are masked and counted.
    ``read_noise`` [counts]: a Poisson-Gaussian frame's values may fall below 0 by the read noise;
    only those below ``-6 read_noise`` count as negative, and the hot limit widens by it.

    ``band_px`` ``(bx, by)`` [cycles/pixel]: the optics' band limit (``2 alpha / lambda`` times the
    pixel size). A sharp column at high dose rises above its 3x3 median by many sigma (an HRTEM
    peak at 3e4 counts by 7 %, 12 sigma), and is signal, not a hot pixel: where the band limit
    is below Nyquist (0.5), a pixel flagged hot must also stand out, by the same margin, from the
    frame low-passed to the band (a cosine transform: the mirrored frame has no edge steps). A
    single hot pixel is white and passes nearly whole into the residual; a band-limited peak does
    not."""
    from scipy.ndimage import median_filter

    y = np.asarray(frame, np.float64)
    nonfinite = ~np.isfinite(y)
    yy = np.where(nonfinite, np.nanmedian(np.where(nonfinite, np.nan, y)), y)
    med = median_filter(yy, size=3, mode="nearest")
    negative = yy < -6 * read_noise
    dead = (yy == 0) & (med > 25)
    hot = yy > med + 12 * np.sqrt(np.maximum(med, 0) + 1 + read_noise**2) + 10
    if band_px is not None and hot.any() and max(band_px) < 0.5:
        from scipy.fft import dctn, idctn

        f = dctn(yy, type=2, norm="ortho")
        kx = np.arange(yy.shape[0]) / (2.0 * yy.shape[0])  # cycles/pixel of each cosine
        ky = np.arange(yy.shape[1]) / (2.0 * yy.shape[1])
        f[(kx[:, None] / band_px[0]) ** 2 + (ky[None, :] / band_px[1]) ** 2 > 1.0] = 0.0
        low = idctn(f, type=2, norm="ortho")
        hot &= yy > low + 12 * np.sqrt(np.maximum(low, 0) + 1 + read_noise**2) + 10
    top = yy.max()
    saturated = (yy == top) if (np.count_nonzero(yy == top) >= 4 and top > 10 * max(np.median(yy), 1)) else np.zeros_like(dead)
    bad = nonfinite | negative | dead | hot | saturated
    return ~bad, {"nonfinite": int(nonfinite.sum()), "negative": int(negative.sum()), "dead": int(dead.sum()),
                  "hot": int((hot & ~saturated).sum()), "saturated": int(saturated.sum()), "total": int(bad.sum())}  # fmt: skip


def _deviance_moments():
    """Tables of the mean and variance of the per-pixel Poisson deviance at mean ``mu``."""
    from scipy.stats import poisson

    mus = np.geomspace(1e-3, 2e3, 300)
    mean, var = np.empty_like(mus), np.empty_like(mus)
    for k, mu in enumerate(mus):
        y = np.arange(0, int(mu + 12 * math.sqrt(mu) + 20))
        p = poisson.pmf(y, mu)
        d = 2 * (np.where(y > 0, y * np.log(np.maximum(y, 1) / mu), 0.0) - (y - mu))
        mean[k] = np.sum(p * d)
        var[k] = np.sum(p * d * d) - mean[k] ** 2
    return mus, mean, var


_DEV = None


def deviance_moments(mu):
    """Per-pixel mean and variance of the Poisson deviance at ``mu`` (tabulated; ``1 + 1/(6 mu)`` and
    ``2`` beyond the table)."""
    global _DEV
    if _DEV is None:
        _DEV = _deviance_moments()
    mus, mean, var = _DEV
    lm = np.log(np.clip(mu, mus[0], mus[-1]))
    return np.interp(lm, np.log(mus), mean), np.interp(lm, np.log(mus), var)


@dataclasses.dataclass
class _Frame:
    counts: np.ndarray
    mask: np.ndarray
    bad: dict
    fit: object
    new_sites: int = 0  # sites this frame brought into view (grow_sites)


def _contrast_ratio(y, w, host_mu, gain: float, read_noise: float) -> np.ndarray:
    """``[K]``: each window's image contrast over the host's: the variance of the counts about their
    mean, less the shot and read noise's, over the variance of the host's expected counts there.
    HRTEM vacuum is as bright as the crystal's mean (the count ratio cannot see it) but flat: its
    contrast ratio is ~0 where the lattice's is ~1."""
    n = np.maximum(w.sum(axis=1), 1.0)
    ye = y / gain
    m = np.sum(w * ye, axis=1) / n
    var = np.sum(w * (ye - m[:, None]) ** 2, axis=1) / n - m - (read_noise / gain) ** 2
    hm = np.sum(w * host_mu, axis=1) / n
    hv = np.sum(w * (host_mu - hm[:, None]) ** 2, axis=1) / n
    return np.maximum(var, 0.0) / np.maximum(hv, 1e-12)


def _evidence_rows(ev, rows):
    """The sites ``rows`` (a slice) of a :class:`inference.windows.WindowEvidence`."""
    return dataclasses.replace(ev, y=ev.y[rows], w=ev.w[rows], models=ev.models[:, rows],
                               log_evidence=np.asarray(ev.log_evidence)[:, rows], scale=np.asarray(ev.scale)[:, rows],
                               background=np.asarray(ev.background)[:, rows], centre=ev.centre[rows])  # fmt: skip


class FieldOfViewScorer:
    """Frames of one field of view scored one at a time: the incremental form of
    :func:`score_field_of_view`, which the live session uses (:mod:`hypotest.live.fov`).

    Built from the first frame (``first [nx, ny]``): the library analysed, the host simulated, the
    detector calibrated and the optics learned where asked, the frame registered, the sites of the
    field of view enumerated and the other hypotheses simulated (once). :meth:`add` registers a
    later frame (its offset followed from the previous frame's: drift) and adds each site's log
    evidence of it; :meth:`result` gives the RESULT.json entries for the frames so far. The sites
    are those of the first frame, and with ``grow_sites`` also those a later frame brings into view
    (drift), appended in the order they appear (indices never change; a new site's ``x_px, y_px``
    are in frame 0's pixels, outside it); a site a later frame does not hold gets no evidence from
    it. Arguments as :func:`score_field_of_view`; ``fit_frame``: the frame whose windows the fit
    check and the site views use, ``"first"`` (batch: each site's first frame) or ``"latest"``
    (live); ``split``: where the sites' windows are scored, in-process (None) or in blocks over
    Ray actors (:class:`workflows.site_shards.SiteShards`, the same numbers; sites added later are
    scored in-process)."""

    def __init__(self, hyps, first, bf, *, host_id=None, defect_prior: float = DEFECT_PRIOR, decide_p: float = DECIDE_P,
                 fit_alpha: float = 0.01, progress=None, images=None, detector: str = "beam", optics: str = "beam",
                 fit_frame: str = "first", split=None, grow_sites: bool = False):  # fmt: skip
        import time

        from hypotest.scoring import _shared_cell
        from inference import noise_from_detector
        from inference.evidence import make_nuisance_prior
        from inference.lattice import host_series
        from inference.lattice_optics import blur_series

        if optics not in ("beam", "frame"):
            raise InputError(f"optics must be 'beam' (BEAM.json's) or 'frame' (learned from the frame), got {optics!r}")
        if optics == "frame" and bf.beam.detector.mode != "stem_annular":
            raise InputError(f"optics learned from the frame are the ADF-STEM inner angle and source size; the detector "
                             f"is {bf.beam.detector.mode!r} (give its optics in BEAM.json)")  # fmt: skip
        if detector not in ("beam", "frame"):
            raise InputError(f"detector must be 'beam' (BEAM.json's gain) or 'frame' (estimated from the frame), got {detector!r}")
        if not (0 < defect_prior < 1):
            raise InputError(f"the defect prior must be in (0, 1), got {defect_prior!r} (default {DEFECT_PRIOR})")
        if fit_frame not in ("first", "latest"):
            raise InputError(f"fit_frame must be 'first' or 'latest', got {fit_frame!r}")
        self.hyps, self.defect_prior, self.decide_p, self.fit_alpha = hyps, defect_prior, decide_p, fit_alpha
        self.fit_frame = fit_frame
        self.grow_sites = bool(grow_sites)
        cell = _shared_cell(hyps)
        self.geo = geo = analyse_library(hyps, host_id)
        self.win = win = window_geometry(bf.beam, geo.lattice, cell)
        self.timing = timing = {}
        t0 = time.perf_counter()
        # the host first: a frame without its lattice is refused before the other simulations
        host_img = periodic_images([hyps.specimens[geo.host]], bf, cell)[0] if images is None else images[geo.host]
        timing["simulate_host"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.host_s = host_series(host_img, cell[:2], geo.lattice)
        self.noise = noise_from_detector(bf.beam.detector)
        self.exposure = exposure = float(bf.beam.dose) * bf.sampling[0] * bf.sampling[1]
        self.bf = bf
        first = np.asarray(first)
        if first.ndim != 2:
            raise InputError(f"a frame is a 2D array of pixels, got shape {first.shape}")
        self.shape = first.shape
        self._check_size(first, 0)
        self.calibration, self.read_e = None, 0.0
        from forward.constants import wavelength

        band = 2 * float(bf.beam.semiangle_cutoff) * 1e-3 / float(wavelength(float(bf.beam.energy)))  # 1/Å
        self.band_px = (band * bf.sampling[0], band * bf.sampling[1])  # the optics' band limit, cycles/pixel
        if detector == "frame":
            self.noise, self.calibration = _calibrate_on(first, self.host_s, bf, geo.lattice)
            self.read_e = self.calibration.read_noise / self.calibration.gain
            first = self.calibration.electrons(first)  # scored in electrons, as add() converts the later frames
            timing["calibrate_detector"] = time.perf_counter() - t0
        self.frames: list[_Frame] = []
        fr0 = self._register(first, None)
        timing["register"] = time.perf_counter() - t0
        self.learned, self.blur = None, None
        if optics == "frame":
            t0 = time.perf_counter()
            bf, host_img, self.learned = _learn_stem_optics(hyps.specimens[geo.host], bf, cell, geo.lattice, fr0, host_img,
                                                            self.host_s, None if images is None else images[geo.host],
                                                            progress)  # fmt: skip
            self.bf = bf
            self.blur = np.asarray(self.learned["source_covariance_A2"])
            self.host_s = blur_series(host_series(host_img, cell[:2], geo.lattice), self.blur)
            fr = self._register(fr0.counts, fr0)  # registered again against the learned host (from the map found)
            fr0 = dataclasses.replace(fr0, fit=dataclasses.replace(fr.fit, peak_ratio=fr0.fit.peak_ratio))
            images = None  # simulated again under the learned detector
            timing["learn_optics"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if images is None:
            others = [s for h, s in enumerate(hyps.specimens) if h != geo.host]
            rest = iter(periodic_images(others, bf, cell, progress))
            images = np.stack([host_img if h == geo.host else next(rest) for h in range(len(hyps.specimens))])
        self.images = images
        timing["simulate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        series = [host_series(im, cell[:2], geo.lattice, rel_threshold=1e-5, primitive=False) for im in images]
        if self.blur is not None:
            series = [blur_series(sr, self.blur) for sr in series]
        self.series = series
        fit0 = fr0.fit
        # every site of each class inside frame 0, a window (plus a pixel) from its edges
        px = min(np.linalg.norm(fit0.m, axis=0))
        self.wpx = wpx = int(math.ceil(win["radius_A"] / px)) + 1
        self.sites = sites = self._enumerate(fit0)
        if not sites:
            raise InputError(f"no site lies a window ({win['radius_A']:.2f} Å) inside the frame's edges: the frame is too small")
        timing["sites"] = time.perf_counter() - t0
        self.di = di = np.arange(-wpx, wpx + 1, dtype=float)
        # pixels of the square within the window radius (plus one pixel: the site is off the centre pixel)
        self.disk = (np.hypot(di[:, None], di[None, :]) <= win["radius_A"] / min(np.linalg.svd(fit0.m, compute_uv=False)) + 1.0).ravel()
        self.corr_factor = 1.0 if self.calibration is None else self.calibration.correlation_factor(win["radius_A"] / px)
        level = float(np.mean(images[geo.host]))
        self.prior = make_nuisance_prior(scale_mean=max(fit0.scale, 1e-6), scale_sd=0.15 * max(fit0.scale, 1e-6),
                                         background_mean=fit0.background, background_sd=0.1 * level)  # fmt: skip
        self.classes = {}
        for c in range(len(geo.classes)):
            idx = [k for k, s in enumerate(sites) if s[0] == c]
            if idx:
                self.classes[c] = self._make_class(c, idx)
        self.timing["score"] = 0.0
        self.span = float(min(cell[0], cell[1]))  # the supercell's shortest period [Å]
        self._joint_cache: dict = {}
        self._last_joint: dict = {}
        self.split = split
        if split is not None:
            split.setup(self)
        self._score(fr0)

    def _enumerate(self, fit) -> list:
        """``[(class, r [2] Å, p [2] frame-0 pixels, lattice index [2])]``: every site of each class
        inside the frame registered at ``fit``, a window (plus a pixel) from its edges."""
        geo, shape, wpx = self.geo, self.shape, self.wpx
        corners = np.array([[0, 0], [shape[0] - 1, 0], [0, shape[1] - 1], [shape[0] - 1, shape[1] - 1]], float)
        fl = np.linalg.solve(geo.lattice, (corners @ fit.m.T + fit.t).T).T
        lo, hi = np.floor(fl.min(0)) - 1, np.ceil(fl.max(0)) + 1
        n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        nvec = np.stack([n1.ravel(), n2.ravel()], 1)
        fit0 = self.frames[0].fit if self.frames else fit
        sites = []
        for c, (_, ref) in enumerate(geo.classes):
            r = ref[None, :] + nvec @ geo.lattice.T
            p = (r - fit.t) @ np.linalg.inv(fit.m).T
            inside = np.all((p >= wpx) & (p <= np.asarray(shape) - 1 - wpx), axis=1)
            p0 = (r - fit0.t) @ np.linalg.inv(fit0.m).T
            for rr, pp, nn in zip(r[inside], p0[inside], nvec[inside]):
                sites.append((c, rr, pp, nn))
        return sites

    def _make_class(self, c: int, idx: list) -> dict:
        geo, series = self.geo, self.series
        members = [geo.host] + geo.members(c)
        r_sites = np.stack([self.sites[k][1] for k in idx])
        _, g, u = geo.class_ops[c]
        cseries = [series[h] if h == geo.host else transformed_series(series[h], g, u) for h in members]
        return {"members": members, "idx": list(idx), "pos": {k: j for j, k in enumerate(idx)}, "r": r_sites,
                "shifts": self._shifts(c, members, r_sites), "series": cseries,
                "total": np.zeros((len(idx), len(members))), "first": None, "latest": None}  # fmt: skip

    def _shifts(self, c, members, r_sites):
        """``[M, K, 2]``: each member's defect site, carried by the class's symmetry (the host is
        invariant under it), moved onto each site."""
        geo = self.geo
        _, g, u = geo.class_ops[c]
        return np.stack([np.zeros_like(r_sites) if h == geo.host else r_sites - (g @ geo.site[h] + u)[None, :]
                         for h in members])  # fmt: skip

    def _grow(self, fr) -> int:
        """Add the sites that frame ``fr`` holds and no earlier frame did (drift brought them into
        view): appended after the others, so every site keeps its index. Returns how many."""
        known = {(c, int(nn[0]), int(nn[1])) for c, _, _, nn in self.sites}
        new = [s for s in self._enumerate(fr.fit) if (s[0], int(s[3][0]), int(s[3][1])) not in known]
        for c, r, p, nn in new:
            k = len(self.sites)
            self.sites.append((c, r, p, nn))
            if c not in self.classes:
                self.classes[c] = self._make_class(c, [k])
                continue
            cl = self.classes[c]
            cl["pos"][k] = len(cl["idx"])
            cl["idx"].append(k)
            cl["r"] = np.vstack([cl["r"], r[None]])
            cl["shifts"] = np.concatenate([cl["shifts"], self._shifts(c, cl["members"], r[None])], axis=1)
            cl["total"] = np.vstack([cl["total"], np.zeros((1, len(cl["members"])))])
        return len(new)

    def _check_size(self, frame, k):
        lat = self.geo.lattice
        s = self.bf.sampling
        if min(frame.shape) * min(s) < 2 * max(np.linalg.norm(lat, axis=0)):
            raise InputError(
                f"frame {k} is {frame.shape[0]}x{frame.shape[1]} pixels ({frame.shape[0] * s[0]:.3g} x "
                f"{frame.shape[1] * s[1]:.3g} Å): smaller than two host cells "
                f"({2 * max(np.linalg.norm(lat, axis=0)):.3g} Å) across; a frame must show the host lattice"
            )

    def _register(self, frame, prev) -> _Frame:
        """``frame`` (electrons) registered; its offset taken as the lattice translate nearest ``prev``'s."""
        from inference.lattice import register_lattice

        frame = np.asarray(frame, np.float64)
        mask, bad = bad_pixel_mask(frame, self.read_e, self.band_px)
        fit = register_lattice(np.where(mask, frame, 0), self.host_s, self.bf.sampling, exposure=self.exposure,
                               noise=self.noise, mask=mask, prior_m=None if prev is None else prev.fit.m)  # fmt: skip
        if prev is not None:  # the offset is defined up to a lattice translation: follow the previous frame
            f = np.linalg.solve(self.geo.lattice, fit.t - prev.fit.t)
            fit = dataclasses.replace(fit, t=fit.t - self.geo.lattice @ np.round(f))
        return _Frame(frame, mask, bad, fit)

    def add(self, frame) -> _Frame:
        """Register ``frame`` (in the first frame's units) and add its evidence to every site's."""
        import time

        frame = np.asarray(frame)
        k = len(self.frames)
        if frame.shape != self.shape:
            raise InputError(f"frame {k} is {frame.shape[0]}x{frame.shape[1]} pixels; the field of view's frames are "
                             f"{self.shape[0]}x{self.shape[1]}")  # fmt: skip
        t0 = time.perf_counter()
        if self.calibration is not None:
            frame = self.calibration.electrons(frame)
        fr = self._register(frame, self.frames[-1])
        self.timing["register"] += time.perf_counter() - t0
        if self.grow_sites:
            fr.new_sites = self._grow(fr)
        self._score(fr)
        return fr

    def _score(self, fr: _Frame) -> None:
        import time

        t0 = time.perf_counter()
        self.frames.append(fr)
        fit = fr.fit
        fi = len(self.frames) - 1
        for c, cl in self.classes.items():
            # the sites the Ray actors were set up with (workflows.site_shards); those drift brought
            # into view later are scored here
            n_split = sum(self.split.sizes.get(c, [])) if self.split is not None else 0
            parts = []
            if n_split:
                parts.append(self.split.evidence(c, fr.counts, fr.mask, fit.m, fit.t, cl["r"][:n_split],
                                                 (fit.scale, fit.background)))  # fmt: skip
            if len(cl["idx"]) > n_split:
                parts.append(class_evidence(fr.counts, fr.mask, fit.m, fit.t, cl["r"][n_split:], cl["shifts"][:, n_split:],
                                            cl["series"], self.di, self.disk, self.win["radius_A"], self.exposure,
                                            self.noise, self.prior, self.calibration, self.corr_factor,
                                            (fit.scale, fit.background)))  # fmt: skip
            ev = parts[0] if len(parts) == 1 else concat_evidence(parts)
            cl["total"] += ev.log_evidence.T
            # (the windows' evidence, the frame of each row): this frame's, and each site's first
            store = (ev, np.full(len(cl["idx"]), fi))
            first = cl["first"]
            if first is None:
                cl["first"] = store
            elif len(first[1]) < len(cl["idx"]):  # sites new in this frame: their first frame is this one
                n0 = len(first[1])
                cl["first"] = (concat_evidence([first[0], _evidence_rows(ev, slice(n0, None))]),
                               np.concatenate([first[1], store[1][n0:]]))  # fmt: skip
            cl["latest"] = store
        self.timing["score"] += time.perf_counter() - t0

    def posteriors(self, c: int, total=None):
        """Class ``c``'s ``(members, log prior [M], log posterior [K, M] unnormalised, posterior [K, M])``
        (of the log evidence ``total [K, M]``, the class's own by default)."""
        cl = self.classes[c]
        members = cl["members"]
        pri = np.array([float(self.hyps.priors[h]) for h in members])
        lp = np.empty(len(members))
        lp[0] = math.log(1 - self.defect_prior)
        lp[1:] = np.log(self.defect_prior * pri[1:] / pri[1:].sum())
        post_log = (cl["total"] if total is None else total) + lp[None, :]
        post = np.exp(post_log - post_log.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
        return members, lp, post_log, post

    def site_window(self, k: int) -> dict:
        """Site ``k``'s window in the fit frame: ``counts``, ``mask`` and each member's fitted expected
        counts ``[M, A, B]`` (NaN outside the window), for the dashboard."""
        try:
            c, j = self._where(k)
        except KeyError:
            raise InputError(f"no site {k}: the field of view has sites 0..{len(self.sites) - 1}") from None
        cl = self.classes[c]
        ev, fis = cl[self.fit_frame]
        n = len(self.di)
        y, w, models, fi = ev.y[j], ev.w[j], ev.models[:, j], fis[j]
        scale, bg = np.asarray(ev.scale)[:, j], np.asarray(ev.background)[:, j]
        if k in self._last_joint:  # scored with its neighbours' defects (the last result())
            y, w, models, scale, bg, fi = self._last_joint[k]["store"]
        mu = self.exposure * (scale[:, None] * models + bg[:, None])
        return {"members": [self.hyps.ids[h] for h in cl["members"]], "frame": int(fi),
                "centre_px": ev.centre[j].tolist(), "counts": y.reshape(n, n), "mask": w.reshape(n, n),
                "expected": mu.reshape(len(cl["members"]), n, n)}  # fmt: skip

    def frames_held(self, k: int) -> int:
        """How many frames so far since site ``k`` came into view (all of them for frame 0's sites)."""
        c, j = self._where(k)
        return len(self.frames) - int(self.classes[c]["first"][1][j])

    def _neighbour_plan(self, results) -> dict:
        """``{k: ((k', h), ...)}``: for each site, the detected defects ``k'`` of other sites within
        the window radius plus the halo, whose contrast reaches its window: sites whose fit holds
        where the host is ruled out (``P(host) <= 1 - decide_p``), taken as their most probable
        hypothesis ``h`` even where that is not decided (two depths of one vacancy look alike)."""
        pos = np.array([[s["x_A"], s["y_A"]] for s in results])
        reach = self.win["radius_A"] + self.win["halo_A"]
        host = self.hyps.ids[self.geo.host]
        plan: dict = {}
        for i, s in enumerate(results):
            if s["is_host"] or s["status"] != "ok" or s["posterior"][host] > 1 - self.decide_p:
                continue
            h = self.hyps.ids.index(s["best"])
            d = np.linalg.norm(pos - pos[i], axis=1)
            for k in np.flatnonzero((d <= reach) & (d > 1e-6)):
                plan.setdefault(int(k), []).append((i, h))
        return {k: tuple(sorted(v)) for k, v in plan.items()}

    def _where(self, k):
        for c, cl in self.classes.items():
            if k in cl["pos"]:
                return c, cl["pos"][k]
        raise KeyError(k)

    def _joint(self, plan: dict) -> dict:
        """``{k: {"total", "store", "with"}}``: each site ``k`` of ``plan`` scored jointly with its
        detected neighbours ``((k', h), ...)``: every member's image plus the neighbours' defect
        contrast (:func:`inference.windows.neighbour_contrast`), over all frames so far, batched
        per class and frame. Cached: a later call with the same neighbours adds the new frames only."""
        span, halo = self.span, self.win["halo_A"]
        taper = (min(0.5 * span, span - halo) - 0.5, span - halo)  # the neighbour's periodic copies stay out
        out, todo = {}, {}
        for k, nb in plan.items():
            c, j = self._where(k)
            cached = self._joint_cache.get((k, nb), (0, np.zeros(len(self.classes[c]["members"])), None))
            if cached[0] == len(self.frames):
                out[k] = {"total": cached[1], "store": cached[2], "with": nb}
            else:
                todo.setdefault(c, []).append((k, j, nb, cached))
        for c, group in todo.items():
            cl = self.classes[c]
            js = np.array([j for _, j, _, _ in group])
            # a site's frames: from its first (drift may have brought it in later) or from where its
            # cached sum stopped
            start = np.maximum(cl["first"][1][js], [cached[0] for *_, cached in group])
            terms = []
            for _, _, nb, _ in group:
                row = []
                for k2, h in nb:
                    c2, j2 = self._where(k2)
                    cl2 = self.classes[c2]
                    m_i = cl2["members"].index(h)
                    row.append((cl2["series"][m_i], cl2["shifts"][m_i, j2], self.sites[k2][1], taper))
                terms.append(row)
            totals = np.stack([cached[1] for *_, cached in group])
            stores = [cached[2] for *_, cached in group]
            for fi in range(int(start.min()), len(self.frames)):
                act = np.flatnonzero(start <= fi)
                # padded to a power of two, at least 16 (the last site repeated): the Laplace step
                # compiles once per batch shape
                rows = list(act) + [act[-1]] * (max(16, 1 << (len(act) - 1).bit_length()) - len(act))
                fr = self.frames[fi]
                ev = class_evidence(fr.counts, fr.mask, fr.fit.m, fr.fit.t, cl["r"][js[rows]], cl["shifts"][:, js[rows]],
                                    cl["series"], self.di, self.disk, self.win["radius_A"], self.exposure, self.noise,
                                    self.prior, self.calibration, self.corr_factor, (fr.fit.scale, fr.fit.background),
                                    neighbours=[terms[i] for i in rows])  # fmt: skip
                totals[act] += np.asarray(ev.log_evidence).T[: len(act)]
                sc, bg = np.asarray(ev.scale), np.asarray(ev.background)
                for a, i in enumerate(act):  # the window the fit check and the site views use
                    if self.fit_frame == "latest" or fi == cl["first"][1][js[i]]:
                        stores[i] = (ev.y[a], ev.w[a], ev.models[:, a], sc[:, a], bg[:, a], fi)
            for i, (k, _, nb, _) in enumerate(group):
                self._joint_cache[(k, nb)] = (len(self.frames), totals[i], stores[i])
                out[k] = {"total": totals[i], "store": stores[i], "with": nb}
        return out

    def result(self) -> dict:
        """The RESULT.json entries (``lattice``, ``sites``, ...) of the frames scored so far.

        Sites are scored independently first (each site's neighbours taken as host); then every site
        whose window a detected defect's contrast reaches is scored again with that contrast added to
        each of its hypotheses' images (:meth:`_joint`), and the decisions re-made, until they no
        longer change (at most three passes). Such a site's ``scored_with`` names the neighbours."""
        import time

        t0 = time.perf_counter()
        joint: dict = {}
        plan: dict = {}
        for _ in range(3):
            results = self._site_results(joint)
            new = self._neighbour_plan(results)
            if new == plan:
                break
            plan = new
            joint = self._joint(plan)
        else:
            results = self._site_results(joint)
        self._last_joint = joint
        # only the current neighbour sets are worth keeping for the next frame
        self._joint_cache = {key: v for key, v in self._joint_cache.items() if plan.get(key[0]) == key[1]}
        return self._result_dict(results, t0)

    def _site_results(self, joint) -> list:
        from scipy.stats import norm

        hyps, geo, exposure = self.hyps, self.geo, self.exposure
        calibration, di = self.calibration, self.di
        results = [None] * len(self.sites)
        for c, cl in self.classes.items():
            idx = cl["idx"]
            ev, fi = cl[self.fit_frame]
            y, w, models = ev.y, ev.w, ev.models
            scale = np.asarray(ev.scale).T
            bg = np.asarray(ev.background).T
            fis = np.array(fi, copy=True)
            total = cl["total"]
            over = [(j, k) for j, k in enumerate(idx) if k in joint]
            if over:
                total, y, w, models, scale, bg = (np.array(a, copy=True) for a in (total, y, w, models, scale, bg))
                for j, k in over:
                    yj, wj, mj, sj, bj, fj = joint[k]["store"]
                    total[j], y[j], w[j], models[:, j], scale[j], bg[j], fis[j] = joint[k]["total"], yj, wj, mj, sj, bj, fj
            members, lp, post_log, post = self.posteriors(c, total)
            fit_f = [self.frames[f].fit for f in fis]
            fsc = np.array([f.scale for f in fit_f])[:, None]
            fbg = np.array([f.background for f in fit_f])[:, None]
            # the fit check of every site's best hypothesis at once: [K, P]
            best = np.argmax(post, axis=1)
            kk = np.arange(len(idx))
            if calibration is None:  # only the pixels a window's disk can hold (the rest have w = 0)
                y, w, mod_best, mod_host = y[:, self.disk], w[:, self.disk], models[best, kk][:, self.disk], models[0][:, self.disk]
            else:  # the slopes need the whole square
                mod_best, mod_host = models[best, kk], models[0]
            mu = exposure * (scale[kk, best][:, None] * mod_best + bg[kk, best][:, None])
            z = np.maximum(y, 0)
            mm = np.maximum(mu, 1e-9)
            if calibration is None:
                dev = np.sum(w * 2 * (np.where(z > 0, z * np.log(np.maximum(z, 1e-30) / mm), 0.0) - (z - mm)), axis=1)
                em, ev_ = deviance_moments(mm)
                e_dev = np.sum(w * em, axis=1) - 2.0
                v_dev = np.sum(w * ev_, axis=1)
            else:  # Pearson's statistic under the calibrated variance, its spread widened by the correlation
                g2 = grad2(mu.reshape(len(idx), len(di), len(di))).reshape(len(idx), -1)
                var = calibration.pixel_variance(mm, g2)
                dev = np.sum(w * (y - mu) ** 2 / var, axis=1)
                e_dev = w.sum(axis=1) - 2.0
                v_dev = 2.0 * w.sum(axis=1) * self.corr_factor
            zscore = (dev - e_dev) / np.sqrt(np.maximum(v_dev, 1e-12))
            pval = norm.sf(zscore)
            host_mu = exposure * (fsc * mod_host + fbg)
            host_expect = np.sum(w * host_mu, axis=1)
            ratio = np.sum(w * y, axis=1) / np.maximum(host_expect, 1e-12)
            n_pix = w.sum(axis=1)
            contrast = None
            if self.bf.beam.detector.mode == "hrtem" and calibration is None:
                contrast = _contrast_ratio(y, w, host_mu, float(self.noise.gain), float(self.noise.read_noise))
            statistic = "deviance" if calibration is None else "pearson"
            for j, k in enumerate(idx):
                b = int(best[j])
                status = "ok"
                if ratio[j] < OFF_SPECIMEN_RATIO or (contrast is not None and contrast[j] < OFF_SPECIMEN_RATIO**2):
                    status = "off_specimen"
                elif pval[j] < self.fit_alpha:
                    status = "unexplained"
                cls, rr, pp, nn = self.sites[k]
                l10 = float((post_log[j, b] - lp[b] - (post_log[j, 0] - lp[0])) / math.log(10))
                results[k] = {
                    "k": k, "class": geo.classes[cls][0], "lattice_index": [int(nn[0]), int(nn[1])],
                    "x_px": float(pp[0]), "y_px": float(pp[1]), "x_A": float(rr[0]), "y_A": float(rr[1]),
                    "best": hyps.ids[members[b]], "best_name": hyps.names[members[b]],
                    "posterior": {hyps.ids[h]: float(post[j, i]) for i, h in enumerate(members)},
                    "log10_bayes_factor": l10, "status": status,
                    "decided": bool(status == "ok" and post[j, b] >= self.decide_p),
                    "is_host": bool(b == 0),
                    "fit": {"statistic": statistic, "deviance": float(dev[j]), "expected": float(e_dev[j]),
                            "sd": math.sqrt(max(float(v_dev[j]), 0.0)), "z": float(zscore[j]), "p_value": float(pval[j]),
                            "alpha": self.fit_alpha, "n_pixels": int(n_pix[j]), "count_ratio_to_host": float(ratio[j]),
                            "contrast_ratio_to_host": None if contrast is None else float(contrast[j])},
                    "scored_with": [{"k": int(k2), "id": hyps.ids[h2]} for k2, h2 in joint[k]["with"]] if k in joint else [],
                }  # fmt: skip
        _flag_neighbours(results, self.win)
        return results

    def _result_dict(self, results, t0) -> dict:
        import time

        hyps, geo, win = self.hyps, self.geo, self.win
        fit0 = self.frames[0].fit
        calibration = self.calibration
        timing = dict(self.timing)
        timing["score"] += time.perf_counter() - t0
        frames = self.frames
        cal = fit0.to_json_dict()
        drift = [{"frame": i, "offset_A": fr.fit.t.tolist(),
                  "drift_px": (np.linalg.inv(fit0.m) @ (fr.fit.t - fit0.t)).tolist()} for i, fr in enumerate(frames)]  # fmt: skip
        counts_by_type = {}
        for s in results:
            key = s["status"] if s["status"] != "ok" else (s["best_name"] if s["decided"] else "undecided")
            counts_by_type[key] = counts_by_type.get(key, 0) + 1
        return {
            "field_of_view": True,
            "lattice": {**cal, "frames": [fr.fit.to_json_dict()["calibration"] for fr in frames], "drift": drift,
                        "primitive_vectors_A": geo.lattice.T.tolist()},
            "host": {"id": hyps.ids[geo.host], "name": hyps.names[geo.host]},
            "site_classes": [{"label": lab, "position_A": pos.tolist(),
                              "hypotheses": [hyps.ids[h] for h in geo.members(c)]}
                             for c, (lab, pos) in enumerate(geo.classes)],  # fmt: skip
            "window": win,
            "rule": {"defect_prior": self.defect_prior, "decide_p": self.decide_p, "fit_alpha": self.fit_alpha,
                     "off_specimen_ratio": OFF_SPECIMEN_RATIO},
            "masked_pixels": [fr.bad for fr in frames],
            "sites": results,
            "counts": counts_by_type,
            "n_frames": int(len(frames)),
            "timing_s": timing,
            "dose_e_per_A2": float(self.bf.beam.dose) * len(frames),
            "detector_calibration": None if calibration is None else calibration.to_json_dict(),
            "optics": self.learned,
        }


def score_field_of_view(hyps, counts, bf, *, host_id=None, defect_prior: float = DEFECT_PRIOR,
                        decide_p: float = DECIDE_P, fit_alpha: float = 0.01, progress=None, images=None,
                        detector: str = "beam", optics: str = "beam", split=None, grow_sites: bool = False) -> dict:
    """Register every frame of ``counts [T, nx, ny]``, enumerate the sites of the first frame and
    score each against its class's hypotheses, the evidence summed over the frames in which the
    site lies inside. Returns the ``lattice``/``sites``/... entries of RESULT.json, with
    ``timing_s`` per stage. ``images [H, gx, gy]``: the hypotheses' periodic images
    (:func:`periodic_images`) when already simulated. ``detector``: ``"beam"`` (the frames are
    counts with BEAM.json's gain and read noise) or ``"frame"`` (the frames are in the detector's
    own units: gain, dark level and read noise are estimated from the first frame,
    :mod:`inference.detector_calibration`, and the frames converted to electrons). ``optics``:
    ``"beam"`` (BEAM.json's optics as they are) or ``"frame"`` (ADF-STEM: the detector's inner angle
    and the effective source size learned from the host lattice of the first frame,
    :mod:`inference.lattice_optics`, and every hypothesis simulated under them). The frames go
    through one :class:`FieldOfViewScorer`; the fit check is on the first frame's windows.
    ``split``: :class:`workflows.site_shards.SiteShards` to score the sites over Ray actors.
    ``grow_sites``: the sites of every frame, not only the first's (those drift brings into view
    are added, each scored from the first frame that holds it; a live session does this)."""
    counts = np.asarray(counts)
    if counts.ndim != 3 or len(counts) == 0:
        raise InputError(f"frames are a [T, nx, ny] stack, got shape {counts.shape}")
    sc = FieldOfViewScorer(hyps, counts[0], bf, host_id=host_id, defect_prior=defect_prior, decide_p=decide_p,
                           fit_alpha=fit_alpha, progress=progress, images=images, detector=detector, optics=optics,
                           split=split, grow_sites=grow_sites)  # fmt: skip
    for frame in counts[1:]:
        sc.add(frame)
    return sc.result()


#: Inner angles tried when the optics are learned, as multiples of BEAM.json's inner angle.
INNER_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5)


def _learn_stem_optics(host_spec, bf, cell, lattice, frame0, host_img, host_s, given_img, progress):
    """The ADF detector's inner angle (from :data:`INNER_FACTORS` of BEAM.json's, a host
    simulation each) and the effective source size (a Gaussian, analytic) that best describe the
    lattice of ``frame0`` (``host_s``: the host image's series, which sets the reflections); returns
    ``(BeamFile under them, host image, RESULT.json entry)``."""
    from inference.lattice import host_series
    from inference.lattice_optics import fit_source_size, measure_series, series_at

    det = bf.beam.detector
    inner0, outer = float(det.inner), float(det.outer)
    alpha = float(bf.beam.semiangle_cutoff)
    inners = sorted({round(inner0 * f, 1) for f in INNER_FACTORS if alpha < inner0 * f < outer} | {inner0})
    g_max = float(np.max(np.hypot(*host_s.g.T)))
    meas = measure_series(frame0.counts, frame0.fit.m, frame0.fit.t, lattice, g_max, mask=frame0.mask)
    rows, best = [], None
    it = progress(inners) if progress else inners
    for inner in it:
        bfi = dataclasses.replace(bf, beam=dataclasses.replace(bf.beam, detector=dataclasses.replace(det, inner=np.asarray(inner))))
        if inner == inner0:
            img = host_img if given_img is None else given_img
        else:
            img = periodic_images([host_spec], bfi, cell)[0]
        fit = fit_source_size(meas, series_at(host_series(img, cell[:2], lattice), meas.g))
        rows.append({"inner_mrad": inner, "chi2_dof": fit.chi2_dof, "source_sd_A": list(fit.sd_A)})
        if best is None or fit.chi2 < best[0].chi2:
            best = (fit, bfi, img, inner)
    fit, bfi, img, inner = best
    sx, sy = fit.sd_A
    entry = {
        "learned_from": "the host lattice of frame 0 (its Fourier coefficients, least squares)",
        "detector_inner_mrad": inner, "detector_inner_nominal_mrad": inner0, "inner_angles_tried": rows,
        "source_covariance_A2": fit.cov.tolist(), "source_covariance_sd_A2": fit.cov_sd.tolist(),
        "source_sd_A": [sx, sy], "chi2_dof": fit.chi2_dof, "reflections": int(len(meas.g)),
        "summary": (f"ADF inner angle {inner:g} mrad (BEAM.json {inner0:g}; tried {', '.join(f'{r['inner_mrad']:g}' for r in rows)}), "
                    f"effective source {sx:.3f} x {sy:.3f} Å rms; lattice chi2/dof {fit.chi2_dof:.1f}"),
    }  # fmt: skip
    return bfi, img, entry


def _calibrate_on(first, host_s, bf, lattice):
    """A frame in the detector's own units -> ``(noise model in electrons, calibration)``: the frame
    registered as it is (its finite pixels, least squares in effect: the dark level dwarfs the
    signal), the detector calibrated on its lattice (:func:`inference.detector_calibration.calibrate_detector`)."""
    from inference import make_noise_model
    from inference.detector_calibration import calibrate_detector
    from inference.lattice import register_lattice

    raw = np.asarray(first, np.float64)
    finite = np.isfinite(raw)
    if finite.sum() < 0.5 * raw.size:
        raise InputError(f"frame 0 has {int((~finite).sum())} of {raw.size} pixels NaN or infinite: too few to calibrate the detector")
    lo = float(np.percentile(raw[finite], 0.1))
    fit = register_lattice(np.where(finite, raw - lo, 0.0), host_s, bf.sampling, exposure=1.0, mask=finite)
    g_max = float(np.max(np.hypot(*host_s.g.T)))
    cal = calibrate_detector(raw, fit.m, fit.t, lattice, g_max=g_max, mask=finite)
    read_e = cal.read_noise / cal.gain
    noise = make_noise_model("poisson_gaussian", gain=1.0, read_noise=read_e) if read_e > 0 else make_noise_model("poisson")
    return noise, cal


def _flag_neighbours(results, win):
    """Mark each site whose window overlaps a decided defect's window (and halo) ``near_defect``."""
    pos = np.array([[s["x_A"], s["y_A"]] for s in results])
    defect = [i for i, s in enumerate(results) if s["decided"] and not s["is_host"]]
    reach = 2 * win["radius_A"] + win["halo_A"]
    for s in results:
        s["near_defect"] = []
    for i in defect:
        d = np.linalg.norm(pos - pos[i], axis=1)
        for j in np.flatnonzero((d < reach) & (d > 1e-6)):
            results[j]["near_defect"].append(int(i))


def periodic_images(specimens, bf, cell, progress=None):
    """Every hypothesis's image, periodic on the supercell, on a grid above Nyquist (STEM: scan
    steps <= 0.2 Å; HRTEM: the camera at <= half the frame pixel, a hard-edged objective aperture)."""
    from forward import make_grid

    step = min(0.2, 0.5 * min(bf.sampling)) if bf.beam.detector.mode == "hrtem" else 0.2
    gpts = tuple(int(math.ceil(cell[i] / step)) for i in (0, 1))
    sim_sampling = min(bf.sim_sampling, 0.5 * step)
    grid = make_grid(extent=cell[:2], sampling=sim_sampling)
    it = progress(specimens) if progress else specimens
    mode = bf.beam.detector.mode
    if mode == "stem_annular":
        from forward.stem import make_scan, make_stem_simulator

        scan = make_scan(start=(0.0, 0.0), end=tuple(cell[:2]), gpts=gpts)
        sim = make_stem_simulator(grid, float(cell[2]), bf.slice_thickness, scan, parametrization=bf.parametrization)
        return np.stack([np.asarray(sim(s, bf.beam), np.float64) for s in it])
    if mode == "hrtem":
        from forward.hrtem import make_hrtem_simulator

        # a hard objective aperture: abTEM's soft edge is one reciprocal pixel of the simulation cell
        # wide, so a supercell's image and a large crystal's differ at the edge (by 0.02 of the beam
        # for SrTiO3 [001] at 25 mrad); a real aperture's edge does not depend on the supercell
        sim = make_hrtem_simulator(grid, float(cell[2]), bf.slice_thickness, parametrization=bf.parametrization,
                                   camera_gpts=gpts, soft_aperture=False)  # fmt: skip
        return np.stack([np.asarray(sim.image_from_exit_wave(sim.exit_wave(s, bf.beam), bf.beam), np.float64) for s in it])
    raise InputError(f"frames of any field of view are scored for detector modes 'hrtem' and 'stem_annular', got {mode!r}")
