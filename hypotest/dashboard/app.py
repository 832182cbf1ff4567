"""The dashboard's FastAPI application: REST query API, WebSocket push and the static page.

Everything goes through a :class:`hypotest.live.view.SessionView`; the web layer never touches the
loop. Routes (``/openapi.json`` lists them with their schemas)::

    GET    /api/status                      session state, counters, latency, beam
    GET    /api/hypotheses                  every hypothesis with its posterior and state
    GET    /api/hypotheses/{id}             one, with provenance, refinement and rejections
    GET    /api/history                     posterior over steps, MAP state, change points
    GET    /api/proposals                   proposed beam conditions, best first
    POST   /api/proposals/{index}/apply     apply the proposal with that ``index`` field (control)
    POST   /api/beam                        apply a BEAM.json beam condition (control)
    POST   /api/hypotheses                  add a hypothesis while running (control)
    DELETE /api/hypotheses/{id}             drop a hypothesis (control)
    POST   /api/auto_apply                  apply proposals automatically or not (control)
    GET    /api/frames/latest.png           the last scored frame (grey)
    GET    /api/simulations/{id}.png        a hypothesis' fitted simulation (grey)
    GET    /api/residual.png                Poisson residual of the best match (diverging)
    GET    /api/sites                       field-of-view sessions: every site, its best type and decision
    GET    /api/sites/{k}                   one site: posterior, fit check, window
    GET    /api/sites/{k}/{layer}.png       its window: layer frame, best (fitted simulation) or residual
    WS     /ws                              the view's events as JSON, one message per event

Every route, the page and the ``/ws`` handshake included, passes :mod:`hypotest.dashboard.guard`
first: 421 when ``Host`` does not name this machine (DNS rebinding), 403 when ``Origin`` is another
site's page, 413 for a body over the cap (1 MiB) before it is read.

Errors: 401 for a control call without the right ``Authorization: Bearer <token>`` (when a token
is set), 404 for an unknown hypothesis id or proposal index or a missing image, 409 when the
session's state does not allow the action, 422 for a malformed body (the field named in ``loc``;
an ``input`` is echoed only when short and finite, non-finite numbers such as NaN are refused) or
one the session rejects (:class:`forward.InputError`, its message as ``detail``).

Numbers that are not finite (a log Bayes factor of -inf) are sent as JSON ``null``: JSON has no
infinity and browsers refuse ``-Infinity``.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import secrets
import struct
import zlib
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, Depends, FastAPI, HTTPException, Path as PathParam, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.websockets import WebSocket, WebSocketDisconnect

from forward import InputError
from hypotest.dashboard.guard import MAX_BODY_BYTES, RequestGuard, check_allowed_hosts, check_max_body_bytes
from hypotest.live.view import SessionView

__all__ = ["make_app", "encode_png", "render_png"]

STATIC_DIR = Path(__file__).parent / "static"
#: Session states in which control actions are refused with 409.
_FINISHED = ("stopped", "failed")
#: How often the WebSocket handler looks at its event queue when it is empty [s].
_POLL_S = 0.05
#: Longest ``input`` echoed in a 422 and longest error message [characters].
_ECHO_CHARS, _DETAIL_CHARS = 200, 2000


# ---------------------------------------------------------------------------------------------
# PNG: colour-mapped arrays, encoded with zlib + struct (PNG spec, W3C/ISO 15948, sections 5-11)
# ---------------------------------------------------------------------------------------------

#: Diverging map anchors at t = 0, 0.25, 0.5, 0.75, 1: ColorBrewer "RdBu" reversed (Harrower &
#: Brewer 2003, Cartogr. J. 40, 27), blue = negative, white = 0, red = positive.
_DIVERGING = np.array(
    [[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77], [103, 0, 31]], dtype=np.float64
)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data (PNG spec 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``rgb`` ``[height, width, 3]`` uint8 (rows top to bottom).

    Every scanline uses filter type 0 (None) and the whole image is one zlib stream in one IDAT
    chunk (PNG spec sections 7.2, 9.2, 10).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
        raise InputError(f"encode_png expects a uint8 array [height, width, 3], got {rgb.dtype} {list(rgb.shape)}")
    h, w = rgb.shape[:2]
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # first byte of each row: filter type 0
    raw[:, 1:] = rgb.reshape(h, 3 * w)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # bit depth 8, colour type 2 (RGB)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _percentile_unit(a: np.ndarray, finite: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``a`` scaled so its ``lo`` and ``hi`` percentiles map to 0 and 1, clipped."""
    vals = a[finite]
    if vals.size == 0:
        return np.zeros_like(a)
    a0, a1 = np.percentile(vals, [lo, hi])
    if not a1 > a0:  # a flat image: mid grey, not black
        return np.full_like(a, 0.5)
    return np.clip((a - a0) / (a1 - a0), 0.0, 1.0)


def render_png(
    array: np.ndarray, cmap: Literal["grey", "diverging"] = "grey", *, low: float = 0.5, high: float = 99.5
) -> bytes:
    """A colour-mapped PNG of a 2-D image ``array`` ``[mx, my]`` ([x, y] indexing as abTEM).

    The PNG shows x to the right and y up (abTEM's ``show()``), one pixel per array element.
    ``grey``: the ``low``..``high`` percentiles of the finite values span black..white (robust to
    hot pixels). ``diverging``: zero is white, +/- the ``high`` percentile of ``|array|`` are full
    red / blue (for residuals in units of the Poisson sigma). Non-finite values are black (grey)
    or white (diverging).
    """
    a = np.asarray(array, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 1:
        raise InputError(f"render_png expects a 2-D image [mx, my], got shape {list(a.shape)}")
    if not 0.0 <= low < high <= 100.0:
        raise InputError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    finite = np.isfinite(a)
    a = np.where(finite, a, 0.0)
    if cmap == "grey":
        t = _percentile_unit(a, finite, low, high)
        rgb = np.repeat(np.round(t * 255.0)[..., None], 3, axis=-1)
    elif cmap == "diverging":
        s = np.percentile(np.abs(a[finite]), high) if finite.any() else 0.0
        t = np.clip(a / (s if s > 0 else 1.0), -1.0, 1.0) * 0.5 + 0.5  # [0, 1], 0.5 = zero
        pos = t * (len(_DIVERGING) - 1)
        i0 = np.clip(np.floor(pos).astype(int), 0, len(_DIVERGING) - 2)
        f = (pos - i0)[..., None]
        rgb = np.round(_DIVERGING[i0] * (1.0 - f) + _DIVERGING[i0 + 1] * f)
    else:
        raise InputError(f"unknown colour map {cmap!r}: expected 'grey' or 'diverging'")
    rgb = rgb.astype(np.uint8).transpose(1, 0, 2)[::-1]  # [x, y] -> rows of y, top row = max y
    return encode_png(np.ascontiguousarray(rgb))


# ---------------------------------------------------------------------------------------------
# Schemas (OpenAPI): responses allow extra fields; request bodies forbid unknown ones
# ---------------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FrameCounters(_Open):
    received: int
    scored: int
    coalesced: int = Field(description="frames summed into another because scoring fell behind")
    rejected: int
    bad_messages: int


class StageLatency(_Open):
    p50: float | None = Field(description="[s]")
    p99: float | None = Field(description="[s]")


class Decision(_Open):
    id: str
    name: str
    posterior: float | None


class Status(_Open):
    state: str = Field(description="starting | running | decided | stopped | failed")
    session_dir: str
    library: str
    source: str
    connection: str = Field(description="connected | disconnected | ended")
    frames: FrameCounters
    frame_rate_hz: float | None = Field(description="frames received per second over the last 10 s")
    latency_s: dict[str, StageLatency | None] = Field(
        description="per stage (ingest, preprocess, score, update, propose, total); null before the first step"
    )
    beam: dict[str, Any] = Field(description="the beam in use, BEAM.json form")
    dose_used_e_per_A2: float | None = Field(description="[e-/Å²]")
    decision: Decision | None
    auto_apply: bool
    step: int


class HypothesisSummary(_Open):
    id: str
    name: str
    family: str
    prior: float | None
    posterior: float | None
    log10_bayes_factor: float | None = Field(description="against the most probable hypothesis; null = -inf")
    rejected: bool
    reason: str | None
    dropped: bool
    state: str = Field(description="surviving | rejected | dropped")


class RefinedParameter(_Open):
    value: float | None
    sd: float | None = Field(None, description="posterior standard deviation")
    crlb: float | None = Field(None, description="Cramér-Rao lower bound on the standard deviation, where computed")
    unit: str | None = None


class Refinement(_Open):
    parameters: dict[str, RefinedParameter]
    frames: int | None = Field(None, description="frames the refinement used")
    method: str | None = None


class HypothesisDetail(HypothesisSummary):
    provenance: dict[str, Any]
    n_atoms: int
    refinement: Refinement | None
    rejections: list[dict[str, Any]]


class History(_Open):
    steps: list[int]
    frame_ids: list[list[int]] = Field(description="source frame ids per step (several when coalesced)")
    ids: list[str]
    posterior: list[list[float | None]] = Field(description="[steps, hypotheses]")
    map_state: list[str] = Field(description="most probable hypothesis id per step")
    change_points: list[int] = Field(description="steps where the metastable state changed")
    beams: list[str] = Field(description="beam label per step")


class Proposal(_Open):
    index: int = Field(description="the proposal's id for POST /api/proposals/{index}/apply (not its rank)")
    label: str
    beam: dict[str, Any]
    expected_gain_bits: float | None = Field(description="expected information gain about the identity [bits]")
    gain_bits_per_electron: float | None = Field(description="[bits per e-/Å²]")
    dose_share: float | None = Field(
        None, description="its share of the remaining dose in Chernoff's allocation (proposals are ordered by it)"
    )
    expected_dose_to_decision: float | None = Field(
        None, description="expected dose to reach the decision using only this beam from now on [e-/Å²]"
    )
    separates: list[list[str]] = Field(description="pairs of hypothesis names it discriminates")


class SiteSummary(_Open):
    k: int = Field(description="the site's index (frame 0's enumeration)")
    site_class: str = Field(alias="class", description="the host site class, e.g. 'S column'")
    x_px: float = Field(description="position in frame 0 [pixels]")
    y_px: float
    frame_x_px: float = Field(description="position in the latest frame [pixels] (frame 0's moved by the drift)")
    frame_y_px: float
    x_A: float = Field(description="position in the specimen's frame [Å]")
    y_A: float
    best: str = Field(description="most probable hypothesis id")
    best_name: str
    p_best: float
    log10_bayes_factor: float | None = Field(description="best against the host")
    decided: bool
    status: str = Field(description="ok | unexplained (fails the fit check) | off_specimen (vacuum, a hole)")
    is_host: bool
    near_defect: list[int] = Field(description="decided defects whose windows overlap this site's")
    scored_with: list[int] = Field(
        default_factory=list, description="detected defects of neighbouring sites whose contrast was added to this site's models"
    )


class SiteDetail(SiteSummary):
    posterior: dict[str, float] = Field(description="hypothesis id -> posterior (the host and the site class's hypotheses)")
    posterior_named: list[dict[str, Any]] = Field(description="[{id, name, p}], most probable first")
    fit: dict[str, Any] = Field(description="the fit check of the best hypothesis on the latest frame's window")
    window: dict[str, Any] = Field(description="{frame, centre_px, size_px, radius_A} of the window images")


class Applied(_Open):
    beam: dict[str, Any] = Field(description="the beam now in use, BEAM.json form")
    label: str | None = Field(None, description="its label (a candidate beam's, or 'custom')")
    sent_to_source: bool | None = Field(None, description="false when the source has no control channel (file replay)")
    proposal: Proposal | None = None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class ApplyRequest(_Strict):
    label: str | None = Field(None, description="the label the operator saw; 409 if proposal `index` changed since")


class AutoApplyRequest(_Strict):
    on: bool


class DetectorJSON(_Strict):
    mode: Literal["hrtem", "stem_annular", "stem_segmented", "4dstem"] = "hrtem"
    inner: float | None = Field(None, ge=0, description="[mrad]")
    outer: float | None = Field(None, ge=0, description="[mrad]")
    gain: float | None = Field(None, gt=0, description="[counts/e-]")
    read_noise: float | None = Field(None, ge=0, description="[counts]")
    mtf: list[float] | None = Field(None, min_length=4, max_length=4)
    n_segments: int | None = Field(None, ge=1)
    rotation: float | None = Field(None, description="[rad]")


class SimulationJSON(_Strict):
    sampling: float | None = Field(None, gt=0, description="[Å]")
    slice_thickness: float | None = Field(None, gt=0, description="[Å]")
    parametrization: Literal["lobato", "kirkland"] | None = None


class BeamJSON(_Strict):
    """A beam condition in BEAM.json form (``hypotest.beamfile``); the session checks the physics."""

    schema_: str | None = Field(None, alias="schema")
    energy: float = Field(gt=0, description="[eV]")
    dose: float = Field(gt=0, description="[e-/Å²] per frame")
    sampling: float | list[float] = Field(description="frame pixel [Å], or [dx, dy]")
    semiangle_cutoff: float | None = Field(None, ge=0, description="[mrad]")
    aberrations: dict[str, float] | None = Field(None, description="Krivanek C_nm [Å], phi_nm [rad]; defocus = -C10 [Å]")
    tilt: list[float] | None = Field(None, min_length=2, max_length=2, description="[mrad]")
    focal_spread: float | None = Field(None, ge=0, description="[Å]")
    angular_spread: float | None = Field(None, ge=0, description="[mrad]")
    source_size: float | None = Field(None, ge=0, description="[Å]")
    detector: DetectorJSON | None = None
    simulation: SimulationJSON | None = None

    @model_validator(mode="after")
    def _sampling_pair(self):
        s = self.sampling
        if isinstance(s, list) and (len(s) != 2 or min(s) <= 0):
            got = s if len(s) <= 4 else f"a list of {len(s)} numbers"
            raise ValueError(f"sampling must be a positive number or [dx, dy] [Å/pixel], got {got}")
        if isinstance(s, float) and s <= 0:
            raise ValueError(f"sampling must be positive [Å/pixel], got {s}")
        return self


class StructureRequest(_Strict):
    """A new hypothesis: its atoms in the session's cell (the dashboard reads no files on the server)."""

    name: str | None = None
    prior: float | None = Field(None, gt=0)
    positions: list[Annotated[list[float], Field(min_length=3, max_length=3)]] | None = Field(None, description="[n, 3] Å")
    numbers: list[Annotated[int, Field(ge=1, le=118)]] | None = Field(None, description="[n] atomic numbers")

    @model_validator(mode="before")
    @classmethod
    def _no_file(cls, data):
        if isinstance(data, dict) and "file" in data:
            raise ValueError(
                "the dashboard does not read structure files on the server; send the atoms in the session's cell: "
                "'positions' ([n, 3] Å) and 'numbers' ([n]), e.g. from ASE: atoms.get_positions().tolist(), "
                "atoms.numbers.tolist()"
            )
        return data

    @model_validator(mode="after")
    def _one_form(self):
        if self.positions is None or self.numbers is None:
            raise ValueError("a structure needs 'positions' ([n, 3] Å) and 'numbers' ([n])")
        if len(self.positions) != len(self.numbers) or not self.numbers:
            raise ValueError(
                f"'positions' has {len(self.positions)} atoms but 'numbers' has {len(self.numbers)}; "
                "give one number per atom (n >= 1)"
            )
        return self


# ---------------------------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------------------------


def _jsonable(x):
    """Plain JSON data: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def _echo(x):
    """``x`` as JSON data for an error body: non-finite floats as their name ("nan", "inf")."""
    if isinstance(x, dict):
        return {str(k): _echo(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_echo(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)


def _cut(text: str, n: int = _DETAIL_CHARS) -> str:
    return text if len(text) <= n else f"{text[: n - 40]}... ({len(text)} characters, cut)"


def _validation_errors(errors) -> list[dict]:
    """FastAPI's validation errors, safe to send: ``type``, ``loc``, ``msg`` (cut) and the ``input``
    only when short (``ctx`` is dropped: ``msg`` already says it)."""
    out = []
    for e in errors:
        item = {"type": str(e.get("type")), "loc": _echo(list(e.get("loc", ()))), "msg": _cut(str(e.get("msg", "")))}
        if "input" in e:
            shown = _echo(e["input"])
            size = len(json.dumps(shown))
            if size <= _ECHO_CHARS:
                item["input"] = shown
            else:
                item["input_omitted"] = f"the input at this location is {size} characters of JSON; not echoed"
        out.append(item)
    return out


def _applied(result: dict) -> dict:
    """What an apply returned, as :class:`Applied`: the beam itself (BEAM.json form, as the
    SessionView contract says) or ``{"beam", "label", "sent_to_source"}`` (LiveSession)."""
    result = _jsonable(result)
    if isinstance(result.get("beam"), dict) and "energy" not in result:
        return result
    return {"beam": result}


def _png_response(array, cmap: str, low: float, high: float) -> Response:
    a = np.asarray(array)
    if a.ndim != 2:
        raise HTTPException(409, f"this image has shape {list(a.shape)}; only 2-D images [mx, my] render as PNG")
    return Response(render_png(a, cmap, low=low, high=high), media_type="image/png", headers={"Cache-Control": "no-store"})


def make_app(
    view: SessionView, *, token: str | None = None, allowed_hosts=(), max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The dashboard application for ``view`` (see the module docstring for the routes).

    ``token``: when set, control actions (POST and DELETE) need ``Authorization: Bearer <token>``;
    reads, images and the WebSocket stay open (bind to 127.0.0.1 or tunnel over SSH to keep them
    private). ``allowed_hosts``: host names besides loopback (and the address a request arrived
    at) that ``Host`` may name; ``max_body_bytes``: the largest request body read
    (:mod:`hypotest.dashboard.guard`).
    """
    if not isinstance(view, SessionView):
        raise InputError(f"make_app expects a SessionView (hypotest.live.view), got {type(view).__name__}")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise InputError("token must be a string of at least 8 characters (use hypotest.dashboard.new_token()), or None")
    from hypotest import __version__

    guard = dict(allowed_hosts=check_allowed_hosts(allowed_hosts), max_body_bytes=check_max_body_bytes(max_body_bytes))
    app = FastAPI(
        title="hypotest dashboard",
        version=__version__,
        description="Query and steer a live hypotest session. Arrays are [x, y] indexed as abTEM; units in each field.",
    )
    bearer = HTTPBearer(auto_error=False, description="the dashboard token, required for control actions when set")

    app.add_middleware(RequestGuard, **guard)  # Host, Origin (another site's page) and body size

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_errors(exc.errors())}, status_code=422)

    def require_token(request: Request, _creds=Security(bearer)) -> None:
        if token is None:
            return
        header = request.headers.get("authorization")
        if not header:
            detail = (
                "this control action needs the dashboard token: send the header 'Authorization: Bearer <token>' "
                "(the token printed when the dashboard started; in the page, enter it in the token field)"
            )
        else:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer":
                detail = f"expected 'Authorization: Bearer <token>', got an Authorization header with scheme {scheme!r}"
            elif secrets.compare_digest(given.strip().encode(), token.encode()):
                return
            else:
                detail = (
                    "the bearer token does not match this dashboard's token; "
                    "use the token printed when the dashboard started"
                )
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})

    control = [Depends(require_token)]

    def ids() -> list[str]:
        return [h["id"] for h in view.hypotheses()]

    def known(hypothesis_id: str) -> None:
        all_ids = ids()
        if hypothesis_id not in all_ids:
            hint = f" (e.g. {all_ids[0]!r})" if all_ids else ""
            raise HTTPException(
                404, f"unknown hypothesis id {hypothesis_id!r}: expected one of the ids listed by GET /api/hypotheses{hint}"
            )

    def running() -> None:
        state = view.status()["state"]
        if state in _FINISHED:
            raise HTTPException(409, f"the session is {state}: it takes no more control actions; start a new session")

    @app.get("/api/status", response_model=Status, tags=["query"])
    def get_status():
        return _jsonable(view.status())

    @app.get("/api/hypotheses", response_model=list[HypothesisSummary], tags=["query"])
    def get_hypotheses():
        return _jsonable(view.hypotheses())

    @app.get("/api/hypotheses/{hypothesis_id}", response_model=HypothesisDetail, tags=["query"], responses={404: {}})
    def get_hypothesis(hypothesis_id: str):
        known(hypothesis_id)
        try:
            return _jsonable(view.hypothesis(hypothesis_id))
        except InputError as exc:
            raise HTTPException(404, _cut(str(exc))) from None

    @app.get("/api/history", response_model=History, tags=["query"])
    def get_history():
        return _jsonable(view.history())

    @app.get("/api/proposals", response_model=list[Proposal], tags=["query"])
    def get_proposals():
        return _jsonable(view.proposals())

    @app.post(
        "/api/proposals/{index}/apply", response_model=Applied, dependencies=control, tags=["control"],
        responses={401: {}, 404: {}, 409: {}},
    )  # fmt: skip
    def apply_proposal(index: Annotated[int, PathParam(ge=0)], body: Annotated[ApplyRequest | None, Body()] = None):
        running()
        props = {p["index"]: p for p in _jsonable(view.proposals())}
        if index not in props:
            now = f"the current proposals have indices {sorted(props)}" if props else "there are no proposals now"
            raise HTTPException(404, f"no proposal with index {index}: {now}; GET /api/proposals")
        if body is not None and body.label is not None and props[index]["label"] != body.label:
            raise HTTPException(
                409,
                f"proposal {index} is now {props[index]['label']!r}, not {body.label!r}: the proposals changed; "
                "look again and apply",
            )
        try:
            applied = view.apply_proposal(index)
        except InputError as exc:
            raise HTTPException(409, _cut(str(exc))) from None
        return {**_applied(applied), "proposal": props[index]}

    @app.post("/api/beam", response_model=Applied, dependencies=control, tags=["control"], responses={401: {}, 409: {}})
    def apply_beam(beam: BeamJSON):
        running()
        try:
            applied = view.apply_beam(beam.model_dump(by_alias=True, exclude_none=True))
        except InputError as exc:
            raise HTTPException(422, _cut(str(exc))) from None
        return _applied(applied)

    @app.post(
        "/api/hypotheses", response_model=HypothesisDetail, status_code=201, dependencies=control, tags=["control"],
        responses={401: {}, 409: {}},
    )  # fmt: skip
    def add_hypothesis(structure: StructureRequest):
        running()
        try:
            return _jsonable(view.add_hypothesis(structure.model_dump(exclude_none=True)))
        except InputError as exc:
            raise HTTPException(422, _cut(str(exc))) from None

    @app.delete(
        "/api/hypotheses/{hypothesis_id}", dependencies=control, tags=["control"], responses={401: {}, 404: {}, 409: {}}
    )
    def drop_hypothesis(hypothesis_id: str) -> dict[str, Any]:
        known(hypothesis_id)
        running()
        if view.hypothesis(hypothesis_id).get("dropped"):
            raise HTTPException(409, f"hypothesis {hypothesis_id!r} is already dropped")
        try:
            return _jsonable(view.drop_hypothesis(hypothesis_id))
        except InputError as exc:
            raise HTTPException(409, _cut(str(exc))) from None

    @app.post("/api/auto_apply", response_model=Status, dependencies=control, tags=["control"], responses={401: {}, 409: {}})
    def set_auto_apply(body: AutoApplyRequest):
        running()
        try:
            return _jsonable(view.set_auto_apply(body.on))
        except InputError as exc:
            raise HTTPException(422, _cut(str(exc))) from None

    pct_low = Query(0.5, ge=0, lt=100, description="percentile shown as black / full blue")
    pct_high = Query(99.5, gt=0, le=100, description="percentile shown as white / full red")
    png = {200: {"content": {"image/png": {}}}, 404: {}}

    def _check(low: float, high: float) -> None:
        if not low < high:
            raise HTTPException(422, f"percentiles must satisfy low < high, got low={low}, high={high}")

    @app.get("/api/frames/latest.png", response_class=Response, responses=png, tags=["images"])
    def latest_frame_png(low: float = pct_low, high: float = pct_high):
        _check(low, high)
        a = view.latest_frame()
        if a is None:
            raise HTTPException(404, "no frame has been scored yet; wait for the first step event")
        return _png_response(a, "grey", low, high)

    @app.get("/api/simulations/{hypothesis_id}.png", response_class=Response, responses=png, tags=["images"])
    def simulation_png(hypothesis_id: str, low: float = pct_low, high: float = pct_high):
        _check(low, high)
        known(hypothesis_id)
        try:
            a = view.simulated_image(hypothesis_id)
        except InputError as exc:
            raise HTTPException(404, _cut(str(exc))) from None
        return _png_response(a, "grey", low, high)

    @app.get("/api/residual.png", response_class=Response, responses=png, tags=["images"])
    def residual_png(high: float = pct_high):
        a = view.residual()
        if a is None:
            raise HTTPException(404, "no residual yet: it needs a scored frame; wait for the first step event")
        return _png_response(a, "diverging", 0.0, high)

    def sites_of() -> Any:
        if not callable(getattr(view, "sites", None)):
            raise HTTPException(404, "this session scores one cell per frame: it has no sites (a field-of-view "
                                     "session has them: hypotest live --field-of-view, or --source sim-fov)")  # fmt: skip
        return view

    @app.get("/api/sites", response_model=list[SiteSummary], tags=["query"], responses={404: {}})
    def get_sites():
        return _jsonable(sites_of().sites())

    @app.get("/api/sites/{k}", response_model=SiteDetail, tags=["query"], responses={404: {}})
    def get_site(k: Annotated[int, PathParam(ge=0)]):
        v = sites_of()
        try:
            return _jsonable(v.site(k))
        except InputError as exc:
            raise HTTPException(404, _cut(str(exc))) from None

    @app.get("/api/sites/{k}/{layer}.png", response_class=Response, responses=png, tags=["images"])
    def site_png(k: Annotated[int, PathParam(ge=0)], layer: Literal["frame", "best", "residual"],
                 low: float = pct_low, high: float = pct_high):  # fmt: skip
        _check(low, high)
        v = sites_of()
        try:
            a = v.site_image(k, layer)
        except InputError as exc:
            raise HTTPException(404, _cut(str(exc))) from None
        return _png_response(a, "diverging", 0.0, high) if layer == "residual" else _png_response(a, "grey", low, high)

    @app.websocket("/ws")
    async def events(ws: WebSocket):
        """One JSON message per session event; the first is ``{"type": "hello", "status": ...}``."""
        await ws.accept()
        q = view.subscribe()
        receiver = asyncio.ensure_future(ws.receive())
        try:
            await ws.send_text(json.dumps({"type": "hello", "status": _jsonable(view.status())}))
            while True:
                try:
                    event = q.get_nowait()
                except queue.Empty:
                    await asyncio.wait({receiver}, timeout=_POLL_S)  # wakes early on disconnect
                    event = None
                if receiver.done():
                    if receiver.result()["type"] == "websocket.disconnect":
                        break
                    receiver = asyncio.ensure_future(ws.receive())  # client messages are ignored
                if event is not None:
                    await ws.send_text(json.dumps(_jsonable(event)))
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away while we were sending
        finally:
            receiver.cancel()
            view.unsubscribe(q)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
