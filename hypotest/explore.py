"""Helpers for exploring libraries, sessions and fitted models in Jupyter (``notebooks/``).

Loaders return the package's own types (:class:`hypotest.Hypothesis`, the session record's
``SessionData``); plots take plain numpy input (or a loaded session) and return a
:class:`matplotlib.figure.Figure` built without ``pyplot``, so nothing is kept in a global figure
registry (a notebook displays the returned figure; a script saves it with ``fig.savefig``).

Arrays on a grid are indexed ``[x, y]`` (as abTEM); images are drawn with x to the right and y up.
Units: positions [Å], dose [e-/Å²], counts [electrons]. The loopback Ray head that
``notebooks/04_cluster.ipynb`` submits its job to is :func:`workflows.start_local_cluster`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from forward import InputError, Specimen, symbol
from hypotest.hypothesis import Hypothesis, load_hypotheses

__all__ = [
    "load_library",
    "load_session",
    "session_image_model",
    "step_fit",
    "crlb_table",
    "plot_posterior_over_time",
    "plot_frame_and_residual",
    "plot_rejections",
    "plot_change_points",
    "plot_structure",
    "plot_crlb_vs_posterior",
    "plot_proposals",
]

#: Floor for log10 Bayes factors on plots (a hypothesis the data exclude outright has -inf).
LOG10_BF_FLOOR = -30.0


# ---------------------------------------------------------------------------------------------
# loaders


def load_library(name_or_path: str | os.PathLike, family: str | None = None) -> list[Hypothesis]:
    """The hypotheses of a built-in library (by name), of a library file (``.h5``) or of a
    directory or glob of structure files (:func:`hypotest.hypothesis.load_hypotheses`).

    Args:
        name_or_path: ``"mos2_defects"``, ``"pt111_adsorbates"``, ``"srtio3_vacancy"``
            (:data:`library.builtin.NAMES`), the path of a library file written by
            ``hypotest library build`` / :func:`library.write_library`, or structure files.
        family: only the hypotheses of this family (default: all).

    Returns:
        :class:`hypotest.Hypothesis` objects in library order; each id is the library's content
        hash (checked).
    """
    return load_hypotheses(name_or_path, family)


def load_session(session_dir: str | os.PathLike):
    """A recorded session (``session.json``, ``record.jsonl``, ``frames.bin``) as ``SessionData``
    (:func:`hypotest.live.record.load_record`): config, ids, names, steps, posterior
    ``[steps, H]``, map_states, change_points, rejections, frames, ``frame(i)``, truth."""
    d = Path(session_dir)
    if not d.is_dir():
        raise InputError(
            f"load_session expected a session directory, got {str(d)!r}, which does not exist or is not a "
            "directory; pass the --out directory of `hypotest demo` or `hypotest live`"
        )
    if not (d / "session.json").is_file():
        raise InputError(
            f"{str(d)!r} is not a session directory: expected session.json in it (written when a session "
            f"starts), found {sorted(p.name for p in d.iterdir())[:8]}"
        )
    from hypotest.live.record import load_record

    return load_record(d)


def session_image_model(session):
    """The expected-image model of a recorded session, rebuilt from its config (library and
    imaging settings, ``session.json``): :class:`hypotest.live.model.ImageModel` over the
    hypotheses the session started with. Its exit waves are simulated on first use (seconds)."""
    from hypotest.live.model import ImageModel

    config = getattr(session, "config", None)
    if not isinstance(config, dict) or "library" not in config or "model" not in config:
        raise InputError(
            "session_image_model expected a loaded session (load_session) whose session.json names its "
            f"'library' and imaging 'model', got {type(session).__name__} with config keys "
            f"{sorted(config) if isinstance(config, dict) else None}"
        )
    by_id = {h.id: h for h in load_library(config["library"])}
    missing = [h["id"] for h in config["hypotheses"] if h["id"] not in by_id]
    if missing:
        raise InputError(
            f"the session's hypotheses {missing[:3]} are not in library {config['library']!r}; the library changed "
            "since the session was recorded: pass the library file it used"
        )
    specimens = [by_id[h["id"]].specimen for h in config["hypotheses"]]
    return ImageModel(specimens, **config["model"])


def step_fit(session, step: int, model=None) -> dict:
    """The counts of one session step and the expected counts of its best hypothesis, fitted.

    The expected counts are ``E * (scale * I_best(x - shift) + background)`` with the MAP nuisance
    values the session recorded for the step (``fit``; :mod:`inference.evidence`) and
    ``E`` = the step's dose [e-/Å²] x camera pixel area [Å²]; ``I_best`` is the best hypothesis'
    image under the step's beam. A coalesced step holds the sum of its frames (a sum of Poisson
    frames is a Poisson frame at the summed dose).

    Args:
        session: a loaded session (:func:`load_session`).
        step: step number (``session.steps[k]["step"]``).
        model: :func:`session_image_model` of the session (built here when None; reuse it for
            several steps).

    Returns:
        ``{"counts", "expected"}`` (``[mx, my]`` float64; a 4D-STEM step as its virtual annular
        dark-field image ``[sx, sy]``), ``"sampling"`` (camera pixel or scan step [Å]),
        ``"hypothesis"`` (id), ``"name"``, ``"frames"`` (record indices), ``"beam_label"``.
    """
    from hypotest.beamfile import parse_beam
    from inference import fourier_shift

    by_step = {int(st["step"]): st for st in getattr(session, "steps", [])}
    if int(step) not in by_step:
        raise InputError(f"step {step} is not in the record; it holds steps {sorted(by_step)[:5]}... ({len(by_step)} in all)")
    st = by_step[int(step)]
    model = session_image_model(session) if model is None else model
    fit = st["fit"]
    hid = fit["hypothesis"]
    ids = [h["id"] for h in session.config["hypotheses"]]
    if hid not in ids:
        raise InputError(f"the best hypothesis {hid} of step {step} was added during the session; its image is not in the model")
    beam = st["beam"]
    counts = model.model_layout(beam, np.sum([np.asarray(session.frame(i), dtype=np.float64) for i in st["frames"]], axis=0))
    image = model.images(beam)[ids.index(hid)]
    exposure = float(st["dose_e_per_A2"]) * model.pixel_area_of(beam)
    shifted = np.asarray(fourier_shift(image, np.asarray(fit["shift_px"], dtype=np.float32)), dtype=np.float64)
    expected = exposure * (float(fit["scale"]) * shifted + float(fit["background"]))
    # a 4D-STEM step as its virtual annular dark-field image (sums of counts stay Poisson)
    counts, expected = (np.asarray(model.virtual_image(beam, a), np.float64) for a in (counts, expected))
    return {
        "counts": counts, "expected": expected, "sampling": tuple(parse_beam(beam).sampling), "hypothesis": hid,
        "name": session.names[session.ids.index(hid)], "frames": list(st["frames"]), "beam_label": st.get("beam_label", ""),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# input checks shared by the plots


def _is_session(data) -> bool:
    return hasattr(data, "steps") and hasattr(data, "posterior") and hasattr(data, "names")


def _matrix(value, what: str, n_cols: int | None = None) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a numeric array [steps, H], got {type(value).__name__}") from None
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise InputError(f"{what} must be a 2-D array [steps, H] with at least one step, got shape {list(m.shape)}")
    if n_cols is not None and m.shape[1] != n_cols:
        raise InputError(f"{what} has {m.shape[1]} columns but {n_cols} names were given; give one name per hypothesis")
    if not np.isfinite(m).any():
        raise InputError(f"{what} has no finite value (NaN marks a hypothesis absent at a step); nothing to plot")
    return m


def _names(names, n: int, what: str) -> list[str]:
    if names is None:
        raise InputError(f"{what} given as an array needs names=[...] (one per hypothesis, {n} here)")
    names = [str(x) for x in names]
    if len(names) != n:
        raise InputError(f"{what} has {n} hypotheses but {len(names)} names were given; give one name per hypothesis")
    return names


def _step_axis(data, n_steps: int) -> np.ndarray:
    if _is_session(data) and len(data.steps) == n_steps:
        return np.asarray([int(s.get("step", k)) for k, s in enumerate(data.steps)])
    return np.arange(n_steps)


def _change_points(change_points, steps: np.ndarray) -> np.ndarray:
    cp = np.asarray([] if change_points is None else list(change_points), dtype=np.float64).ravel()
    if cp.size and (not np.all(np.isfinite(cp)) or cp.min() < steps.min() or cp.max() > steps.max()):
        raise InputError(
            f"change points must be steps within [{int(steps.min())}, {int(steps.max())}], got {cp.tolist()}"
        )
    return cp


# ---------------------------------------------------------------------------------------------
# the posterior, rejections, change points


def plot_posterior_over_time(data, names: Sequence[str] | None = None, *, change_points=None, log_scale: bool = False,
                             title: str | None = None) -> Figure:  # fmt: skip
    """Posterior probability of every hypothesis after each step: one line per hypothesis.

    Args:
        data: a loaded session (:func:`load_session`) or a posterior matrix ``[steps, H]``.
        names: ``[H]`` hypothesis names (default: the session's, when ``data`` is one).
        change_points: steps where the state changed (the session's by default), drawn as
            vertical dashed lines.
        log_scale: log10 probability on the y axis (shows hypotheses long after rejection).

    The posterior is Bayes' theorem over the discrete library (:mod:`inference.posterior`).
    """
    if _is_session(data):
        post = _matrix(data.posterior, "session posterior")
        names = _names(data.names if names is None else names, post.shape[1], "session posterior")
        change_points = data.change_points if change_points is None else change_points
    else:
        post = _matrix(data, "posterior")
        names = _names(names, post.shape[1], "posterior")
    lo, hi = float(np.nanmin(post)), float(np.nanmax(post))
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(f"posterior must be probabilities in [0, 1], got values in [{lo:g}, {hi:g}]")
    steps = _step_axis(data, post.shape[0])
    cp = _change_points(change_points, steps)
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    y = np.log10(np.clip(post, 1e-300, 1.0)) if log_scale else post
    marker = "o" if post.shape[0] < 40 else None
    for h, name in enumerate(names):
        ax.plot(steps, y[:, h], marker=marker, markersize=3, label=name)
    if cp.size:
        lo, hi = (float(np.nanmin(y)), 0.0) if log_scale else (0.0, 1.0)
        ax.vlines(cp, lo, hi, colors="k", linestyles="dashed", linewidth=0.8, label="change point")
    ax.set_xlabel("step")
    ax.set_ylabel("log10 P(h | frames)" if log_scale else "P(h | frames)")
    ax.set_title(title or f"posterior over {len(names)} hypotheses")
    if len(names) <= 12:
        ax.legend(fontsize="small", loc="best")
    return fig


def _rule_log10(config: dict | None) -> float | None:
    """The Bayes-factor threshold (log10) a session config states (``rule_threshold``), if any."""
    thr = (config or {}).get("rule_threshold")
    if isinstance(thr, (int, float)) and 0 < thr < 1:
        return math.log10(thr)
    return None


def _session_matrix(session, key: str) -> np.ndarray:
    """``[steps, H]`` of a per-step field (listed in each step's ``ids`` order) in session order;
    NaN where a hypothesis was absent or the value was not finite (JSON null)."""
    col = {h: i for i, h in enumerate(session.ids)}
    m = np.full((len(session.steps), len(session.ids)), np.nan)
    for s, st in enumerate(session.steps):
        for h, v in zip(st.get("ids", session.ids), st[key]):
            if h in col and v is not None:
                m[s, col[h]] = float(v)
    return m


def plot_rejections(data, names: Sequence[str] | None = None, *, rejections: Sequence[dict] | None = None,
                    threshold: float | None = None, title: str | None = None) -> Figure:  # fmt: skip
    """Bayes factors against the best hypothesis over time, and where each hypothesis fell.

    Left: log10 Bayes factor ``log10 p(y|h)/p(y|best)`` of every hypothesis after each step (one
    line per hypothesis), the rejection threshold as a shaded band and a cross where each
    rejection was decided. Right: the final log10 Bayes factor of each hypothesis (one bar per
    hypothesis; red: below the threshold now). Thresholds below 10^-2 are "decisive" on Jeffreys' scale
    (Jeffreys, Theory of Probability, 3rd ed. (1961), App. B; Kass & Raftery, JASA 90 (1995) 773).

    Args:
        data: a loaded session or a matrix ``[steps, H]`` of log10 Bayes factors.
        names: ``[H]`` names (default: the session's, when ``data`` is one).
        rejections: dicts with ``"name"`` (or ``"id"``), ``"step"`` and ``"log10_bayes_factor"``
            (the session's ``rejections`` by default).
        threshold: the rule's Bayes factor in (0, 1) (default: the session config's, else 1e-3).
    """
    ids = None
    config = None
    if _is_session(data):
        bf = _matrix(_session_matrix(data, "log10_bayes_factor"), "session log10 Bayes factors")
        names = _names(data.names if names is None else names, bf.shape[1], "session log10 Bayes factors")
        ids = list(getattr(data, "ids", []) or [])
        rejections = data.rejections if rejections is None else rejections
        config = getattr(data, "config", None)
    else:
        bf = _matrix(data, "log10 Bayes factors")
        names = _names(names, bf.shape[1], "log10 Bayes factors")
    if threshold is None:
        t10 = _rule_log10(config)
        t10 = -3.0 if t10 is None else t10
    else:
        if not (0 < float(threshold) < 1):
            raise InputError(f"threshold must be a Bayes factor in (0, 1) (e.g. 1e-3), got {threshold!r}")
        t10 = math.log10(float(threshold))
    bf = np.clip(bf, LOG10_BF_FLOOR, None)
    steps = _step_axis(data, bf.shape[0])
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax, axb = fig.subplots(1, 2, width_ratios=(3, 2))
    for h, name in enumerate(names):
        ax.plot(steps, bf[:, h], label=name)
    lo = min(float(np.nanmin(bf)), t10) - 1.0
    ax.axhspan(lo, t10, color="tab:red", alpha=0.1, label=f"rejected: B < 10^{t10:g}")
    xs, ys = [], []
    for r in rejections or ():
        who = r.get("name")
        if who not in names and ids and r.get("id") in ids:
            who = names[ids.index(r["id"])]
        if who not in names:
            raise InputError(f"rejection {r!r} names no hypothesis of this plot; expected one of {names}")
        xs.append(float(r["step"]))
        ys.append(max(float(r["log10_bayes_factor"]), LOG10_BF_FLOOR))
    if xs:
        ax.scatter(xs, ys, marker="x", color="k", zorder=3, label="rejection")
    ax.set_ylim(lo, max(0.5, float(np.nanmax(bf)) + 0.5))
    ax.set_xlabel("step")
    ax.set_ylabel("log10 Bayes factor vs best")
    ax.set_title(title or "Bayes factors against the best hypothesis")
    if len(names) <= 12:
        ax.legend(fontsize="small", loc="best")
    final = np.nan_to_num(bf[-1], nan=0.0)
    colors = ["tab:red" if f < t10 else "tab:blue" for f in final]  # rejected now (a rejected one may return)
    axb.barh(np.arange(len(names)), final, color=colors)
    axb.set_yticks(np.arange(len(names)), [n[:28] for n in names], fontsize="small")
    axb.invert_yaxis()
    axb.axvline(t10, color="tab:red", linestyle="dashed", linewidth=0.8)
    axb.set_xlabel("final log10 Bayes factor")
    return fig


def plot_change_points(data, names: Sequence[str] | None = None, *, change_points=None, posterior=None,
                       title: str | None = None) -> Figure:  # fmt: skip
    """The most probable hypothesis after each step, with the detected change points.

    Top: the index of the MAP hypothesis per step (a step line; tick labels are names) and the
    change points as vertical dashed lines (Bayesian online change-point detection, Adams & MacKay,
    arXiv:0710.3742 (2007), or the HMM's state switches, :mod:`inference.changepoint`). Bottom
    (when a posterior is known): the probability of the MAP hypothesis.

    Args:
        data: a loaded session, or MAP states per step: hypothesis indices ``[steps]`` (int).
        names: ``[H]`` names (default: the session's, when ``data`` is one).
        change_points: steps where the state changed (the session's by default).
        posterior: ``[steps, H]`` (the session's by default), for the bottom panel.
    """
    if _is_session(data):
        names = _names(data.names if names is None else names, len(data.ids), "session")
        ids = list(data.ids)
        unknown = [m for m in data.map_states if m not in ids]
        if unknown:
            raise InputError(f"session MAP states {unknown[:3]} are not hypothesis ids of the session (ids {ids[:3]}...)")
        states = np.asarray([ids.index(m) for m in data.map_states], dtype=np.int64)
        change_points = data.change_points if change_points is None else change_points
        posterior = data.posterior if posterior is None else posterior
    else:
        states = np.asarray(data)
        if states.ndim != 1 or states.size == 0 or states.dtype.kind not in "iu":
            raise InputError(
                f"MAP states must be a non-empty 1-D array of hypothesis indices (int) [steps], got "
                f"dtype {states.dtype} and shape {list(states.shape)}"
            )
        if names is None:
            raise InputError("MAP states given as indices need names=[...] (one per hypothesis)")
        names = [str(n) for n in names]
        if states.min() < 0 or states.max() >= len(names):
            raise InputError(f"MAP state indices must lie in [0, {len(names) - 1}] (one per name), got {states.tolist()}")
    steps = _step_axis(data, states.size)
    cp = _change_points(change_points, steps)
    post = None if posterior is None else _matrix(posterior, "posterior", len(names))
    if post is not None and post.shape[0] != states.size:
        raise InputError(f"posterior has {post.shape[0]} steps but there are {states.size} MAP states; give one row per step")
    fig = Figure(figsize=(7.5, 4.6 if post is not None else 3.0), layout="constrained")
    axes = fig.subplots(2 if post is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    ax.step(steps, states, where="post", color="tab:blue", label="MAP hypothesis")
    used = np.unique(states)
    ax.set_yticks(used, [names[i][:28] for i in used], fontsize="small")
    ax.set_ylim(-0.5, len(names) - 0.5)
    if cp.size:
        ax.vlines(cp, -0.5, len(names) - 0.5, colors="k", linestyles="dashed", linewidth=0.8, label="change point")
    ax.set_title(title or f"MAP state over time ({cp.size} change point{'s' if cp.size != 1 else ''})")
    ax.legend(fontsize="small", loc="best")
    if post is not None:
        axes[1].plot(steps, post[np.arange(states.size), states], color="tab:green")
        axes[1].set_ylim(0, 1.02)
        axes[1].set_ylabel("P(MAP)")
    axes[-1].set_xlabel("step")
    return fig


# ---------------------------------------------------------------------------------------------
# frames and structures


def plot_frame_and_residual(frame, expected, *, sampling=None, title: str | None = None) -> Figure:
    """A frame, the expected counts of a hypothesis and their Poisson (Pearson) residual.

    The residual ``r = (y - mu) / sqrt(mu)`` has mean 0 and variance 1 in every pixel when ``mu``
    is the true expected count (McCullagh & Nelder, Generalized Linear Models, 2nd ed. (1989),
    sec. 2.4.2); the title reports ``chi2/pixel = mean(r^2)``, about 1 for a hypothesis that
    explains the frame and clearly above 1 for one that does not (structure in the residual map).

    Args:
        frame: counts ``[mx, my]`` (indexed ``[x, y]``).
        expected: expected counts ``[mx, my]`` (> 0), e.g. scale x dose x pixel area x image +
            background of the best hypothesis.
        sampling: pixel size [Å] (one number or ``(sx, sy)``) for axes in Å; default pixels.
    """
    y = np.asarray(frame, dtype=np.float64)
    mu = np.asarray(expected, dtype=np.float64)
    if y.ndim != 2 or mu.shape != y.shape:
        raise InputError(
            f"frame and expected counts must be 2-D arrays [mx, my] of one shape, got {list(y.shape)} and {list(mu.shape)}"
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(mu))):
        raise InputError("frame and expected counts must be finite; got NaN or inf")
    if (mu <= 0).any():
        raise InputError(
            f"expected counts must be > 0 in every pixel (a Poisson mean), got minimum {mu.min():g}; add the "
            "fitted background or raise the dose"
        )
    r = (y - mu) / np.sqrt(mu)
    if sampling is None:
        extent, unit = (0, y.shape[0], 0, y.shape[1]), "px"
    else:
        s = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (2,))
        if not np.all(np.isfinite(s)) or (s <= 0).any():
            raise InputError(f"sampling must be positive [Å/pixel], got {sampling!r}")
        extent, unit = (0, y.shape[0] * s[0], 0, y.shape[1] * s[1]), "Å"
    fig = Figure(figsize=(12.0, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    lim = max(float(np.abs(r).max()), 1e-9)
    panels = (
        (y, "frame [counts]", "gray", None),
        (mu, "expected [counts]", "gray", None),
        (r, "residual (y - mu)/sqrt(mu)", "RdBu_r", (-lim, lim)),
    )
    for ax, (img, label, cmap, lims) in zip(axes, panels):
        vmin, vmax = lims if lims else (None, None)
        im = ax.imshow(img.T, origin="lower", extent=extent, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_title(label)
        ax.set_xlabel(f"x [{unit}]")
        ax.set_ylabel(f"y [{unit}]")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{title + ': ' if title else ''}chi2/pixel = {float(np.mean(r * r)):.3f}")
    return fig


def plot_structure(item, *, title: str | None = None) -> Figure:
    """Atom positions of a structure: projected along the beam (x, y) and seen from the side (x, z).

    One scatter per element (marker area grows with Z), the periodic cell as a rectangle.

    Args:
        item: a :class:`forward.Specimen`, or anything holding one as ``.specimen`` (a
            :class:`hypotest.Hypothesis`, a :class:`library.LibraryEntry`); positions [Å].
    """
    specimen = getattr(item, "specimen", item)
    if not isinstance(specimen, Specimen):
        raise InputError(
            f"plot_structure expected a forward.Specimen or a hypothesis/library entry holding one, got "
            f"{type(item).__name__}"
        )
    pos = np.asarray(specimen.positions, dtype=np.float64)
    z = np.asarray(specimen.numbers).astype(int)
    cell = np.asarray(specimen.cell, dtype=np.float64)
    fig = Figure(figsize=(10.0, 4.2), layout="constrained")
    ax, side = fig.subplots(1, 2, width_ratios=(cell[0] / cell[1] + 0.3, cell[0] / cell[2] + 0.3))
    from matplotlib.patches import Rectangle

    for k, zz in enumerate(sorted(set(z.tolist()), reverse=True)):
        sel = z == zz
        size = 12.0 + 2.5 * zz
        color = f"C{k % 10}"
        ax.scatter(pos[sel, 0], pos[sel, 1], s=size, color=color, edgecolors="k", linewidths=0.4,
                   label=f"{symbol(zz)} ({int(sel.sum())})")  # fmt: skip
        side.scatter(pos[sel, 0], pos[sel, 2], s=size, color=color, edgecolors="k", linewidths=0.4)
    ax.add_patch(Rectangle((0, 0), cell[0], cell[1], fill=False, linestyle="dashed", color="0.4"))
    side.add_patch(Rectangle((0, 0), cell[0], cell[2], fill=False, linestyle="dashed", color="0.4"))
    for a, ylab in ((ax, "y [Å]"), (side, "z (beam) [Å]")):
        a.set_aspect("equal")
        a.set_xlabel("x [Å]")
        a.set_ylabel(ylab)
    ax.set_title(title or getattr(item, "name", "") or f"{specimen.n_atoms} atoms", fontsize="medium")
    side.set_title("side view")
    ax.legend(fontsize="small", loc="upper right")
    return fig


# ---------------------------------------------------------------------------------------------
# refinement and design


def _posterior_samples(idata) -> dict[str, np.ndarray]:
    """``{name: [chain, draw, ...]}`` from an ArviZ posterior (an ``xarray.DataTree`` with a
    ``posterior`` group) or a dict of arrays."""
    post = getattr(idata, "posterior", None)
    if post is not None:
        return {str(k): np.asarray(post[k].values) for k in post.data_vars}
    if isinstance(idata, dict):
        out = {}
        for k, v in idata.items():
            a = np.asarray(v, dtype=np.float64)
            if a.ndim < 2:
                raise InputError(f"samples of {k!r} must be [chain, draw, ...], got shape {list(a.shape)}")
            out[str(k)] = a
        return out
    raise InputError(
        f"expected an ArviZ posterior DataTree (inference.nuts_refine) or a dict of samples [chain, draw, ...], got "
        f"{type(idata).__name__}"
    )


def _crlb_components(idata, bound: dict, truth: dict | None) -> list[tuple[dict, np.ndarray]]:
    """``(row, draws)`` per free parameter component: the rows of :func:`crlb_table` and the
    posterior draws (all chains) of that component."""
    samples = _posterior_samples(idata)
    if not isinstance(bound, dict) or not bound:
        raise InputError(f"bound must be a non-empty dict of CRLB standard deviations (inference.crlb), got {bound!r}")
    missing = [k for k in bound if k not in samples]
    if missing:
        raise InputError(f"parameters {missing} have a bound but no posterior samples (samples have {sorted(samples)})")
    out = []
    for name, b in bound.items():
        s = samples[name]
        flat, shape = s.reshape(s.shape[0] * s.shape[1], -1), s.shape[2:]
        bb = np.asarray(b, dtype=np.float64).ravel()
        if bb.size != flat.shape[1]:
            raise InputError(
                f"bound of {name!r} has {bb.size} components but its samples have {flat.shape[1]} "
                f"(shape {list(shape)}); compute both for the same free parameters"
            )
        tr = None if truth is None or name not in truth else np.asarray(truth[name], dtype=np.float64).ravel()
        for c in range(flat.shape[1]):
            label = f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(c, shape))}]" if shape else name
            mean, sd = float(flat[:, c].mean()), float(flat[:, c].std(ddof=1))
            row = {"parameter": label, "mean": mean, "sd": sd, "crlb": float(bb[c]), "sd_over_crlb": sd / float(bb[c])}
            if tr is not None:
                row.update(truth=float(tr[c]), z=(mean - float(tr[c])) / float(bb[c]))
            out.append((row, flat[:, c]))
    return out


def crlb_table(idata, bound: dict, truth: dict | None = None) -> list[dict]:
    """Posterior mean and standard deviation of every free parameter component against its
    Cramér-Rao lower bound (:func:`inference.crlb`; Rao, Bull. Calcutta Math. Soc. 37 (1945) 81;
    Cramér, Mathematical Methods of Statistics (1946), sec. 32.3).

    For a well-identified parameter with a flat prior the posterior sd approaches the CRLB as the
    dose grows (Bernstein-von Mises), so ``sd / crlb`` near 1 says the refinement extracts what the
    data hold; well above 1: the sampler or the model loses precision; below 1: the prior adds
    information.

    Returns:
        one dict per component: ``parameter`` ("positions[0, 1]"), ``mean``, ``sd``, ``crlb``,
        ``sd_over_crlb`` and, with ``truth``, ``truth`` and ``z`` = (mean - truth) / crlb.
    """
    return [row for row, _ in _crlb_components(idata, bound, truth)]


def plot_crlb_vs_posterior(idata, bound: dict, *, truth: dict | None = None, max_panels: int = 12,
                           title: str | None = None) -> Figure:  # fmt: skip
    """NUTS posterior marginals against the Cramér-Rao bound, one panel per parameter component.

    Each panel: a histogram of the posterior draws (all chains), the Gaussian ``N(mean, crlb^2)``
    that an efficient estimator would reach (one line), the truth (when given) as a vertical line,
    and ``sd/crlb`` in the title (:func:`crlb_table`).

    Args:
        idata: the ArviZ posterior DataTree from :func:`inference.nuts_refine` (or ``{name: [chain, draw, ...]}``).
        bound: :func:`inference.crlb` output: ``{name: sd}`` with the shapes of the parameters.
        truth: optional true values ``{name: array}``.
        max_panels: draw at most this many components (the first ones).
    """
    comps = _crlb_components(idata, bound, truth)[: int(max_panels)]
    cols = min(len(comps), 4)
    nrows = math.ceil(len(comps) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, (row, d) in zip(axes, comps):
        ax.hist(d, bins=30, density=True, color="tab:blue", alpha=0.5, label="NUTS posterior")
        m, b = row["mean"], row["crlb"]
        x = np.linspace(m - 4.0 * max(b, row["sd"]), m + 4.0 * max(b, row["sd"]), 200)
        ax.plot(x, np.exp(-0.5 * ((x - m) / b) ** 2) / (b * math.sqrt(2 * math.pi)), color="tab:red", label="N(mean, CRLB²)")
        if "truth" in row:
            ax.axvline(row["truth"], color="k", linestyle="dashed", linewidth=0.8, label="truth")
        ax.set_title(f"{row['parameter']}: sd/CRLB = {row['sd_over_crlb']:.2f}", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for ax in axes[len(comps) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small")
    fig.suptitle(title or "posterior vs Cramér-Rao bound")
    return fig


def plot_proposals(proposals, *, title: str | None = None) -> Figure:
    """Candidate beam conditions by expected information gain per electron (one bar each).

    Args:
        proposals: :class:`inference.Proposal` objects or their dicts (``label``,
            ``gain_bits_per_electron``, ``expected_gain_bits``), as :func:`inference.rank_conditions`
            returns them or a session step records them. The EIG is the mutual information
            between the hypothesis and the next frame (Lindley, Ann. Math. Stat. 27 (1956) 986).
    """
    items = [p.to_dict() if hasattr(p, "to_dict") else p for p in proposals]
    if not items:
        raise InputError("no proposals to plot: got an empty list; rank candidate conditions first (inference.rank_conditions)")
    try:
        labels = [str(p.get("label") or f"condition {p['index']}") for p in items]
        per_e = np.asarray([float(p["gain_bits_per_electron"]) for p in items])
        bits = np.asarray([float(p["expected_gain_bits"]) for p in items])
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            f"each proposal needs label/index, gain_bits_per_electron and expected_gain_bits (inference.Proposal), "
            f"missing {exc}"
        ) from None
    fig = Figure(figsize=(7.5, 0.45 * len(items) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    order = np.argsort(-per_e)
    ypos = np.arange(len(items))
    ax.barh(ypos, per_e[order], color=["tab:green"] + ["tab:gray"] * (len(items) - 1))
    ax.set_yticks(ypos, [labels[i][:40] for i in order], fontsize="small")
    ax.invert_yaxis()
    for yk, i in zip(ypos, order):
        ax.annotate(f"{bits[i]:.2f} bits", (per_e[i], yk), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize="x-small")  # fmt: skip
    ax.set_xlabel("expected information gain per electron [bits/e-]")
    ax.set_title(title or "proposed beam conditions (best first)")
    return fig
