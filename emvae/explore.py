"""``emvae explore``: a run's latent space in the browser -- the library half.

:class:`Explorer` is one run loaded for exploring (model on its device, table, the analysis'
clusters and embeddings when ``emvae analyze`` wrote them); it knows nothing of the web. It

* lists the scatter's axes and colours (:meth:`Explorer.points`, :meth:`Explorer.colours`): any
  numeric column of the particle table and of ``analyze/clusters.csv`` (z, PCA, UMAP, cluster,
  theta, ELBO, ...), and hands any of them over as one float32 array
  (:meth:`Explorer.array`: what the page draws a million points from);
* renders the generator at any (z, theta, shift) (:meth:`Explorer.render`, through
  :class:`emvae.render.PosedGenerator`), requests arriving together run as one batch
  (:class:`Batcher`) under ``torch.no_grad`` on the run's device; a run fitted with
  ``--classes K`` renders each image as the class it is given (1-based, as the table's
  ``class``);
* with classes, lists each class's particles (:meth:`Explorer.class_positions`: the scatter's
  class filter) and each class's count and median z (:meth:`Explorer.class_summary`);
* shows one particle (:meth:`Explorer.particle`): the image as the model saw it, its
  reconstruction under its inferred pose and the generator at its z without the pose (as its
  class, with classes);
* writes a selection of particles, or the rest of them (of every particle, or of the classes
  shown) (:meth:`Explorer.save_selection`), as
  ``emvae select`` writes one: ``NAME.txt`` and ``NAME.npy`` of 0-based input rows (``emvae fit
  --ind``, ``emvae select --indices``), and the input's STAR / .cs rows when it was one.

The web half is :mod:`emvae.explore_app` (FastAPI routes, the page, the server); it imports this
module and this module imports nothing of it (one way). A bad request (an unknown run, a z of
the wrong length, an index beyond the stack) raises :class:`RequestError` with a 4xx status and
a one-line message; nothing a request sends stops the server.
"""

from __future__ import annotations

import base64
import io
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from emvae.errors import ConfigError, EmvaeError, InputError
from emvae.latents import latent_columns
from emvae.render import PosedGenerator
from emvae.run import CONFIG, EXPLORE, Run

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from emvae.particles import Particles
    from emvae.select import InputRows

#: ``emvae explore``'s address by default: this machine only (emvae.explore_app serves it).
HOST, PORT = "127.0.0.1", 8050
#: A saved selection's answer lists its input rows up to this many (None beyond).
MAX_LISTED = 100_000
#: The most images one /generate request may ask for.
MAX_BATCH = 1024
#: Particles whose z set the generator's display range.
CONTRAST_SAMPLE = 256
#: The page's walk along one z: from this quantile to that of the particles' z (of the class
#: drawn, with classes), as emvae montage's traversals (:func:`emvae.montage.traversal_z`).
WALK = (0.02, 0.98)
#: A column with at most this many distinct integer values is coloured by category.
MAX_CATEGORIES = 24
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class RequestError(EmvaeError):
    """A request the explorer cannot answer: ``status`` is its HTTP status (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- batching


@dataclass
class _Job:
    inputs: tuple[torch.Tensor, ...]
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None


class Batcher:
    """Runs ``fn`` on the concatenation of the inputs of calls that arrive together.

    ``fn`` takes tensors whose first axis is the batch and returns one tensor with the same
    first axis. A call queues its inputs; whichever caller gets the run lock waits ``wait_s``
    for others to join, then runs everything queued (at most ``max_batch`` rows at a time) and
    hands each caller its rows. One batch runs at a time (the model is not re-entrant)."""

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        lock: threading.Lock | None = None,
        max_batch: int = MAX_BATCH,
        wait_s: float = 0.002,
    ) -> None:
        self.fn = fn
        self.lock = lock or threading.Lock()
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        #: sizes of the batches run so far (for tests and curiosity)
        self.batches: list[int] = []

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``fn(*inputs)`` for this request's rows, run in one batch with the requests that arrive
        together (up to ``max_batch`` rows)."""
        job = _Job(inputs)
        with self._queue_lock:
            self._queue.append(job)
        while not job.done.is_set():
            if self.lock.acquire(timeout=0.005):
                try:
                    if not job.done.is_set():
                        time.sleep(self.wait_s)
                        self._run_queued()
                finally:
                    self.lock.release()
            else:
                job.done.wait(0.005)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _run_queued(self) -> None:
        with self._queue_lock:
            jobs: list[_Job] = []
            rows = 0
            while self._queue and (
                not jobs or rows + len(self._queue[0].inputs[0]) <= self.max_batch
            ):
                job = self._queue.pop(0)
                jobs.append(job)
                rows += len(job.inputs[0])
        if not jobs:
            return
        try:
            parts = [torch.cat(a) for a in zip(*(j.inputs for j in jobs), strict=True)]
            out = self.fn(*parts)
            self.batches.append(rows)
            start = 0
            for job in jobs:
                n = len(job.inputs[0])
                job.result = out[start : start + n]
                start += n
        except Exception as e:  # every caller of this batch gets the error
            for job in jobs:
                job.error = e
        finally:
            for job in jobs:
                job.done.set()


# ----------------------------------------------------------------------------- pictures


def display_range(images: np.ndarray, bernoulli: bool) -> tuple[float, float]:
    """The generator's display range: [0, 1] for pixel probabilities, else robust
    percentiles of ``images`` (emvae.montage's contrast)."""
    if bernoulli:
        return 0.0, 1.0
    from emvae.figures.tiles import contrast

    return contrast(images)


def to_pixels(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(C, D, D)`` float -> ``(D, D)`` or ``(D, D, 3)`` uint8 over [lo, hi] (one tile)."""
    from emvae.figures.tiles import tile, to_uint8

    return tile(to_uint8(image, lo, hi)[None, None], pad=0)


def png_data_url(image: np.ndarray, lo: float, hi: float) -> str:
    """One image ``(C, D, D)`` as a ``data:image/png;base64,...`` URL over [lo, hi]."""
    buf = io.BytesIO()
    Image.fromarray(to_pixels(image, lo, hi)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _json_value(v: Any) -> Any:
    """A table value for JSON: numbers as float/int (NaN and inf as None), the rest as str."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return None if v is None else str(v)


def _floats(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in np.asarray(values, np.float64)]


# ----------------------------------------------------------------------------- one run


class Explorer:
    """One run, loaded for exploring (module docstring). ``out_dir``: where selections go
    (``RUN/explore`` by default)."""

    def __init__(
        self,
        run: Run,
        device: torch.device | str = "cpu",
        out_dir: str | Path | None = None,
    ) -> None:
        from emvae.select import query_frame, read_clusters

        self.run = run
        self.name = run.path.resolve().name
        self.device = torch.device(device)
        self.model, self.config, _ = run.model(self.device)
        self.cfg = self.model.config
        #: the model's classes (``--classes``; 1 without classes)
        self.classes = self.cfg.classes
        self.table = run.table()
        if self.classes > 1 and "class" not in self.table:
            raise ConfigError(
                f"{run.path}: the model has {self.classes} classes but its table no class "
                "column: fit it again"
            )
        self.notes: list[str] = []
        try:
            clusters = read_clusters(run.path)
            self.frame = query_frame(self.table, clusters)
        except EmvaeError as e:  # an analysis of another fit: left out, with a note
            self.frame = self.table.reset_index(drop=True)
            self.notes.append(f"analyze/clusters.csv left out: {e}")
        self.zcols = latent_columns(self.table)
        self.zdim = self.cfg.zdim
        self.size = self.cfg.image_size
        self.channels = self.cfg.channels
        self.out_dir = Path(out_dir) if out_dir is not None else run.path / EXPLORE
        self.lock = threading.Lock()  # one forward pass at a time on the model
        self.generator = PosedGenerator(self.model).to(self.device).eval()
        self.batcher = Batcher(self._render_batch, self.lock)
        self._particles: Particles | None = None
        self._particles_error: str | None = None
        self._source: InputRows | None = None
        frame = self.frame
        self._numeric = [
            str(c)
            for c in frame.columns
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        ]
        self._colours = self._numeric + [
            str(c)
            for c in frame.columns
            if str(c) not in self._numeric
            and str(c) != "image"
            and frame[c].nunique() <= MAX_CATEGORIES
        ]
        self.zrange = self._zranges()
        self.contrast = self._contrast()

    # ------------------------------------------------------------------ what it shows

    def __len__(self) -> int:
        return len(self.table)

    def _zranges(self) -> list[dict[str, Any]]:
        """Each z slider: from the particles' 0.5th to 99.5th percentile, widened by a tenth
        (a dimension every particle shares: its value +- 3), starting at the median; and the
        walk along it (``walk``: its 2nd and 98th percentile, as emvae montage's traversals)."""
        out: list[dict[str, Any]] = []
        for col in self.zcols[: self.zdim]:
            z = self.table[col].to_numpy(np.float64)
            z = z[np.isfinite(z)]
            if not len(z):
                out.append({"min": -3.0, "max": 3.0, "value": 0.0, "walk": [-2.5, 2.5]})
                continue
            lo, mid, hi = (float(v) for v in np.quantile(z, [0.005, 0.5, 0.995]))
            pad = 0.1 * (hi - lo)
            if hi - lo < 1e-6:
                lo, hi, pad = mid - 3.0, mid + 3.0, 0.0
            walk = [float(v) for v in np.quantile(z, WALK)]
            out.append({"min": lo - pad, "max": hi + pad, "value": mid, "walk": walk})
        return out

    def _contrast(self) -> tuple[float, float]:
        """The generator's display range, from its images at (up to) 256 particles' z (each as
        its own class, with classes: one range for every class)."""
        n = len(self.table)
        rows = np.unique(np.linspace(0, n - 1, min(n, CONTRAST_SAMPLE)).round().astype(int))
        z = self.particle_z(rows) if n else np.zeros((1, self.zdim), np.float32)
        classes = None
        if self.classes > 1:
            classes = self.particle_class(rows) if n else np.ones(1, np.int64)
        images = self.render(z, np.zeros(len(z)), np.zeros((len(z), 2)), classes)
        return display_range(images, self.cfg.likelihood == "bernoulli")

    def particle_z(self, rows: np.ndarray) -> np.ndarray:
        """``(n, K)`` posterior means of the particles at table positions ``rows``."""
        if not self.zdim:
            return np.zeros((len(rows), 0), np.float32)
        result: np.ndarray = self.table[self.zcols[: self.zdim]].to_numpy(np.float32)[rows]
        return result

    def particle_class(self, rows: np.ndarray) -> np.ndarray:
        """``(n,)`` the classes (1-based, the table's ``class``) of the particles at table
        positions ``rows``; all 1 without classes."""
        if self.classes == 1:
            return np.ones(len(rows), np.int64)
        result: np.ndarray = self.table["class"].to_numpy(np.int64)[rows]
        return result

    def check_classes(self, classes: ArrayLike | None) -> np.ndarray | None:
        """``classes`` (1-based, one or a list) as int64 ``(n,)``, each in 1..K; None stays
        None. Without classes only class 1 exists."""
        if classes is None:
            return None
        c = np.atleast_1d(np.asarray(classes, dtype=np.float64))
        k = self.classes
        if c.ndim != 1 or not np.all(np.isfinite(c)) or not np.all(np.mod(c, 1) == 0):
            raise RequestError(400, f"class: whole numbers 1..{k} (the table's class)")
        if np.any((c < 1) | (c > k)):
            bad = int(c[(c < 1) | (c > k)][0])
            has = f"classes 1..{k}" if k > 1 else "one class (1): it was fitted without --classes"
            raise RequestError(404, f"class {bad}: this model has {has}")
        return c.astype(np.int64)

    def class_positions(self, classes: ArrayLike | None) -> np.ndarray:
        """Table positions (ascending) of the particles whose class is one of ``classes``
        (1-based; None: every particle): what the scatter shows under its class filter."""
        wanted = self.check_classes(classes)
        if wanted is None:
            return np.arange(len(self), dtype=np.int64)
        mine = np.isin(self.particle_class(np.arange(len(self))), wanted)
        return np.flatnonzero(mine).astype(np.int64)

    def class_summary(self) -> list[dict[str, Any]]:
        """Each class (1-based): its particles (``count``, ``share``), the median of each z
        over them (``z``: where the generator's sliders start for that class) and each z's walk
        over them (``walk``: its 2nd and 98th percentile, as ``emvae montage`` draws that
        class's traversals); the sliders' medians and walks for a class without particles.
        Empty without classes."""
        if self.classes == 1:
            return []
        labels = self.particle_class(np.arange(len(self)))
        z = self.particle_z(np.arange(len(self))).astype(np.float64)
        out = []
        for c in range(1, self.classes + 1):
            mine = labels == c
            median = [r["value"] for r in self.zrange]
            walk = [list(r["walk"]) for r in self.zrange]
            for d, col in enumerate(z[mine].T):
                col = col[np.isfinite(col)]
                if len(col):
                    median[d] = float(np.median(col))
                    walk[d] = [float(v) for v in np.quantile(col, WALK)]
            share = float(mine.mean()) if len(self) else 0.0
            out.append(
                {"class": c, "count": int(mine.sum()), "share": share, "z": median, "walk": walk}
            )
        return out

    def views(self) -> list[dict[str, str]]:
        """The scatter's preset axes: z (or z1 against theta for 1-D z), PCA, UMAP."""
        have = set(self._numeric)
        out = []
        if self.zdim >= 2:
            out.append({"name": "z1 / z2", "x": "z1", "y": "z2"})
        elif self.zdim == 1:
            out.append({"name": "z1 / theta", "x": "z1", "y": "theta_deg"})
        for a, b, name in (("PC1", "PC2", "PCA"), ("UMAP1", "UMAP2", "UMAP")):
            if {a, b} <= have:
                out.append({"name": name, "x": a, "y": b})
        if not out and {"theta_deg", "elbo"} <= have:
            out.append({"name": "theta / ELBO", "x": "theta_deg", "y": "elbo"})
        return out or [{"name": "input row / ELBO", "x": "input_row", "y": "elbo"}]

    def meta(self) -> dict[str, Any]:
        """What the page needs to draw its controls."""
        colours = self._colours
        first = ("class", "cluster", "elbo") if self.classes > 1 else ("cluster", "elbo")
        default_colour = next((c for c in first if c in colours), colours[0])
        shift_max = max(1.0, round(self.size / 4))
        return {
            "name": self.name,
            "path": str(self.run.path),
            "particles": len(self),
            "zdim": self.zdim,
            "size": self.size,
            "channels": self.channels,
            "kind": "rgb" if self.channels == 3 else "grey" if self.channels == 1 else "multi",
            "likelihood": self.cfg.likelihood,
            "ctf": self.cfg.ctf,
            "posed": self.generator.posed,
            "device": str(self.device),
            "views": self.views(),
            "numeric": self._numeric,
            "colours": colours,
            "default_colour": default_colour,
            "z": [{"name": c, **r} for c, r in zip(self.zcols, self.zrange, strict=False)],
            "theta": {"min": -180.0, "max": 180.0, "value": 0.0},
            "shift": {"min": -shift_max, "max": shift_max, "value": 0.0},
            "contrast": list(self.contrast),
            "selections": str(self.out_dir),
            "next_selection": self.next_name(),
            "next_rest": self.next_name("rest"),
            "notes": self.notes,
            "classes": self.class_summary(),
        }

    def points(
        self, x: str, y: str, colour: str | None = None, classes: ArrayLike | None = None
    ) -> dict[str, Any]:
        """The scatter: ``x``, ``y`` (numeric columns) and the colour of each particle, in table
        order (None where a value is missing). A categorical colour comes as ``codes`` into
        ``labels``, a continuous one as ``values`` with its ``range``. With ``classes``
        (1-based) only those classes' particles, their table positions in ``index``."""
        numeric = self._numeric
        for axis, col in (("x", x), ("y", y)):
            if col not in numeric:
                raise RequestError(
                    404, f"{axis}={col!r}: no such numeric column (have {', '.join(numeric)})"
                )
        pos = None if classes is None else self.class_positions(classes)
        rows = slice(None) if pos is None else pos
        out: dict[str, Any] = {} if pos is None else {"index": [int(i) for i in pos]}
        out |= {
            "x": _floats(self.frame[x].to_numpy()[rows]),
            "y": _floats(self.frame[y].to_numpy()[rows]),
            "xlabel": x,
            "ylabel": y,
        }
        if colour:
            c = self.colours(colour)
            for key in ("codes", "values"):
                if key in c and pos is not None:
                    c[key] = [c[key][i] for i in pos]
            out["colour"] = c
        return out

    def _check_colour(self, column: str, what: str = "colour=") -> pd.Series:
        """The frame's ``column`` if it colours the scatter (every numeric column does), else a
        404 (``what`` leads the message)."""
        if column not in self._colours:
            raise RequestError(
                404, f"{what}{column!r}: no such column (have {', '.join(self._colours)})"
            )
        return self.frame[column]

    def _categories(self, column: str) -> tuple[list[Any], np.ndarray] | None:
        """``(labels, codes)`` when ``column`` colours by category (text, ``cluster``, or
        integers with few values): labels sorted, codes ``(n,)`` int64 into them, -1 missing.
        None for a continuous column."""
        s = self._check_colour(column)
        numeric = column in self._numeric
        integral = numeric and np.all(np.mod(s.dropna().to_numpy(np.float64), 1) == 0)
        if numeric and column != "cluster" and not (integral and s.nunique() <= MAX_CATEGORIES):
            return None
        values = s.to_numpy()
        known = pd.notna(values)
        inverse, uniques = pd.factorize(values[known])
        names = [_json_value(u) for u in uniques]
        labels = sorted(set(names), key=lambda v: (str(type(v)), v))
        if column == "class" and self.classes > 1:  # every class, with or without particles
            labels = sorted(set(labels) | set(range(1, self.classes + 1)))
        index = {label: k for k, label in enumerate(labels)}
        lookup = np.array([index[n] for n in names] or [0], np.int64)
        codes = np.full(len(values), -1, np.int64)
        codes[known] = lookup[inverse]
        return labels, codes

    def colours(self, column: str, values: bool = True) -> dict[str, Any]:
        """One colouring: a categorical column as ``codes`` into ``labels`` (with each label's
        ``counts``), a continuous one as ``values`` with its ``range``; without ``values`` the
        per-particle lists are left out (the page reads them from :meth:`array`)."""
        cats = self._categories(column)  # a 404 for an unknown column
        if cats is not None:
            labels, codes = cats
            counts = np.bincount(codes[codes >= 0], minlength=len(labels))
            out: dict[str, Any] = {
                "name": column,
                "kind": "category",
                "labels": labels,
                "counts": [int(c) for c in counts],
            }
            if values:
                out["codes"] = [int(c) if c >= 0 else None for c in codes]
            return out
        v = self.frame[column].to_numpy(np.float64)
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        out = {"name": column, "kind": "continuous", "range": [lo, hi]}
        if values:
            out["values"] = _floats(v)
        return out

    def array(self, column: str, codes: bool = False) -> np.ndarray:
        """One column for every particle in table order as float32 (NaN where missing): a
        numeric column's values, or with ``codes`` (and always for a text column) a
        colouring's category codes into :meth:`colours`' ``labels`` (NaN missing)."""
        self._check_colour(column, what="")
        cats = self._categories(column) if codes or column not in self._numeric else None
        if cats is None:  # a numeric column (a continuous colour asked for as codes: too)
            values: np.ndarray = self.frame[column].to_numpy(np.float64).astype(np.float32)
            return values
        out = cats[1].astype(np.float32)
        out[cats[1] < 0] = np.nan
        return out

    # ------------------------------------------------------------------ the generator

    @torch.no_grad()
    def _render_batch(self, *inputs: torch.Tensor) -> torch.Tensor:
        args = [a.to(self.device) for a in inputs]
        out: torch.Tensor = self.generator(*args).float().cpu()
        return out

    def render(
        self,
        z: ArrayLike | None,
        theta_deg: ArrayLike,
        shift_px: ArrayLike,
        classes: ArrayLike | None = None,
    ) -> np.ndarray:
        """The generator's images ``(B, C, D, D)`` (pixel means) at z ``(B, K)``, ``theta_deg``
        ``(B,)`` and ``shift_px`` ``(B, 2)`` (model pixels, image frame; see
        :mod:`emvae.render`) of ``classes`` ``(B,)`` or one (1-based; needed with
        ``--classes``), batched with any other requests in flight."""
        return self.batcher(*self.check_pose(z, theta_deg, shift_px, classes)).numpy()

    def generate(
        self,
        z: ArrayLike | None,
        theta_deg: ArrayLike,
        shift_px: ArrayLike,
        raw: bool = False,
        classes: ArrayLike | None = None,
    ) -> dict[str, Any]:
        """:meth:`render` as the page shows it: one PNG data URL per image on the generator's
        display range (``contrast``), and with ``raw`` the pixel values themselves."""
        images = self.render(z, theta_deg, shift_px, classes)
        lo, hi = self.contrast
        out: dict[str, Any] = {
            "images": [png_data_url(im, lo, hi) for im in images],
            "contrast": [lo, hi],
        }
        if raw:
            out["values"] = images.tolist()
        return out

    def check_pose(
        self,
        z: ArrayLike | None,
        theta_deg: ArrayLike,
        shift_px: ArrayLike,
        classes: ArrayLike | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Validate and shape a request: z ``(B, K)`` (or one ``(K,)``), theta ``(B,)`` or one
        value, shift ``(B, 2)`` or one pair, classes ``(B,)`` or one (1-based; required with
        ``--classes``, only 1 without); every value finite, B <= :data:`MAX_BATCH`. The
        generator's latent input: z, and with classes the one-hot of each image's class."""
        k = self.zdim
        z = np.asarray(z if z is not None else np.zeros((1, k)), dtype=np.float64)
        if z.ndim == 1:
            z = z[None] if len(z) or k == 0 else np.zeros((1, 0))
        if z.ndim != 2 or z.shape[1] != k:
            got = z.shape[-1] if z.ndim >= 1 else 0
            raise RequestError(
                400, f"z has {got} values per image but this model's z has {k} dimensions"
            )
        theta = np.atleast_1d(np.asarray(theta_deg, dtype=np.float64))
        shift = np.asarray(shift_px, dtype=np.float64)
        shift = shift[None] if shift.ndim == 1 else shift
        if theta.ndim != 1:
            raise RequestError(400, "theta_deg: one angle per image (degrees)")
        if shift.ndim != 2 or shift.shape[1] != 2:
            raise RequestError(400, "shift_px: one (x, y) pair per image (model pixels)")
        cls = self.check_classes(classes)
        if cls is None and self.classes > 1:
            raise RequestError(
                400, f"this model has {self.classes} classes: say which to draw (class 1..)"
            )
        parts = [("z", z), ("theta_deg", theta), ("shift_px", shift)]
        if cls is not None:
            parts.append(("class", cls))
        b = max(len(a) for _, a in parts)
        for name, a in parts:
            if len(a) not in (1, b):
                raise RequestError(400, f"{name} has {len(a)} rows; the others have {b}")
            if not np.all(np.isfinite(a)):
                raise RequestError(400, f"{name}: every value must be a finite number")
        if b > MAX_BATCH:
            raise RequestError(400, f"{b} images in one request; at most {MAX_BATCH}")
        if b == 0:
            raise RequestError(400, "no images asked for")

        def rows(a: np.ndarray) -> torch.Tensor:
            a = np.broadcast_to(a, (b, *a.shape[1:])) if len(a) == 1 else a
            return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)

        latent = rows(z)
        if self.classes > 1:
            assert cls is not None
            one_hot = np.eye(self.classes)[np.broadcast_to(cls, (b,)) - 1]
            latent = torch.cat([latent, torch.tensor(one_hot, dtype=torch.float32)], 1)
        return latent, rows(theta), rows(shift)

    # ------------------------------------------------------------------ one particle

    def particles(self) -> Particles:
        """The run's input images (:meth:`emvae.run.Run.particles`), opened once; a 409 when
        they cannot be read (moved, changed, or a run made elsewhere)."""
        if self._particles is None and self._particles_error is None:
            try:
                self._particles = self.run.particles()
            except (EmvaeError, OSError) as e:
                self._particles_error = str(e)
        if self._particles is None:
            raise RequestError(
                409,
                f"the run's input images cannot be read ({self._particles_error}); run "
                "emvae explore in the folder the fit ran in",
            )
        return self._particles

    def check_index(self, index: int) -> int:
        """``index`` (0-based row of the table) if it names a particle, else a 404."""
        n = len(self)
        if not 0 <= index < n:
            raise RequestError(
                404, f"particle {index} is beyond the stack: it holds {n} (0-based: 0..{n - 1})"
            )
        return int(index)

    @torch.no_grad()
    def particle_images(self, index: int) -> dict[str, np.ndarray]:
        """Particle ``index`` (table position, 0-based) as the model saw it, its reconstruction
        under the pose and z the model infers from it (its CTF applied with ``--ctf on``), and
        the generator at its z with no pose (as the table's class, with classes): each
        ``(C, D, D)``; and the inferred pose (``theta_deg``, ``shift_px`` in model pixels), ``z``
        and ``class`` (1-based: the class of the reconstruction, the most probable)."""
        from emvae.geometry import model_to_image_pose
        from emvae.models import pixels_to_images
        from emvae.objective import pixel_mean, with_ctf

        index = self.check_index(index)
        particles = self.particles()
        x = particles.images(np.array([index])).to(self.device)
        mode = self.cfg.ctf
        ctf = None
        if mode != "off":
            try:
                params = particles.ctf(mode)
            except (EmvaeError, OSError):
                params = None
            if params is not None:
                from emvae.ctf import likelihood_ctf

                x, ctf = likelihood_ctf(params[index : index + 1], mode, x, self.device)
        if ctf is None and self.cfg.encoder_needs_ctf:
            why = "its CTF cannot be read, and this model's networks see images filtered by it"
            raise RequestError(422, f"particle {index}: {why}")
        with self.lock:
            self.model.eval()
            with self.model.table_poses(ctf is not None or self.cfg.ctf != "on"):  # as the table
                q = self.model.encode(x, ctf=ctf)
            params_out = self.model.decode(q.z_mu, q.pose_mu, full=True, classes=q.best_class())
            if ctf is not None:
                params_out = with_ctf(self.cfg, params_out, ctf.to(params_out.dtype))
            recon = pixels_to_images(pixel_mean(self.cfg, params_out), self.size)
        pose = q.pose_mu.float()
        theta = pose[:, 0] if self.cfg.rotation else pose.new_zeros(1)
        r = int(self.cfg.rotation)  # the rigid part (affine / spline parameters follow it)
        shift = pose[:, r : r + 2] if self.cfg.translation else pose.new_zeros(1, 2)
        theta_deg, shift_px = model_to_image_pose(theta, shift, self.size)
        z = q.z_mu.float().cpu().numpy()
        best = q.best_class()
        classes = self.particle_class(np.array([index])) if self.classes > 1 else None
        canonical = self.render(z, np.zeros(1), np.zeros((1, 2)), classes)
        return {
            "observed": x[0].float().cpu().numpy(),
            "reconstruction": recon[0].float().cpu().numpy(),
            "generator": canonical[0],
            "theta_deg": theta_deg.cpu().numpy(),
            "shift_px": shift_px.cpu().numpy(),
            "z": z,
            "class": np.ones(1, np.int64) if best is None else best.cpu().numpy() + 1,
        }

    def particle(self, index: int) -> dict[str, Any]:
        """:meth:`particle_images` as the page shows it: PNG data URLs (the observed image on
        its own contrast, the two renderings on the generator's), the particle's table row and
        its pose and z."""
        from emvae.figures.tiles import contrast

        images = self.particle_images(index)
        lo, hi = self.contrast
        obs = images["observed"]
        own = display_range(obs, self.cfg.likelihood == "bernoulli")
        recon_range = contrast(images["reconstruction"]) if self.cfg.ctf == "on" else (lo, hi)
        row = self.frame.iloc[index]
        out: dict[str, Any] = {
            "index": int(index),
            "row": {str(k): _json_value(v) for k, v in row.items()},
            "theta_deg": float(images["theta_deg"][0]),
            "shift_px": [float(v) for v in images["shift_px"][0]],
            "z": [float(v) for v in images["z"][0]],
            "observed": png_data_url(obs, *own),
            "reconstruction": png_data_url(images["reconstruction"], *recon_range),
            "generator": png_data_url(images["generator"], lo, hi),
            "ranges": {"observed": list(own), "reconstruction": list(recon_range)},
        }
        if self.classes > 1:  # the class drawn: the table's, the most probable
            out["class"] = int(self.particle_class(np.array([index]))[0])
        return out

    # ------------------------------------------------------------------ selections

    def next_name(self, prefix: str = "selection") -> str:
        """The first ``PREFIX_NNN`` (``selection_001``, ``rest_001``, ...) with no file in
        ``out_dir``."""
        k = 1
        while any(self.out_dir.glob(f"{prefix}_{k:03d}.*")):
            k += 1
        return f"{prefix}_{k:03d}"

    def _input_rows(self) -> InputRows:
        """The run's input for the STAR / .cs subset (read once); index lists only when it
        cannot be read."""
        from emvae.select import InputRows, read_input_rows

        if self._source is None:
            try:
                self._source = read_input_rows(self.config, self.table)
            except (EmvaeError, OSError) as e:
                self._source = InputRows("none", note=f"index lists only: {e}")
        return self._source

    def save_selection(
        self,
        positions: Sequence[float],
        name: str | None = None,
        rest: bool = False,
        classes: ArrayLike | None = None,
    ) -> dict[str, Any]:
        """Write the particles at table ``positions`` -- or with ``rest`` every particle *not*
        at them -- under ``out_dir/NAME`` as ``emvae select`` does (``NAME.txt``, ``NAME.npy``:
        their 0-based input rows, ascending; and the input's STAR / .cs rows). NAME is letters,
        digits, ``_ - .`` (no folder, no suffix), ``selection_NNN`` / ``rest_NNN`` when empty;
        an existing NAME is refused (409), nothing is overwritten. With ``classes`` (1-based:
        the classes the scatter shows) every position must be of those classes (else 400) and
        the rest is their other particles."""
        from emvae.errors import OutputExistsError
        from emvae.select import selected_input_rows, write_selection

        name = self.next_name("rest" if rest else "selection") if not name else name
        if not NAME.fullmatch(name) or name.lower().endswith((".txt", ".npy", ".star", ".cs")):
            raise RequestError(
                400,
                f"name {name!r}: letters, digits, '_', '-' and '.' only (up to 64), "
                "without a suffix",
            )
        idx = np.asarray(list(positions), dtype=np.float64)
        if idx.ndim != 1 or (not len(idx) and not rest):
            raise RequestError(400, "select at least one particle")
        if not np.all(np.mod(idx, 1) == 0):
            raise RequestError(400, "indices: whole numbers (table positions, 0-based)")
        pos = np.unique(idx.astype(np.int64))
        bad = pos[(pos < 0) | (pos >= len(self))]
        if len(bad):
            self.check_index(int(bad[0]))
        wanted = self.check_classes(classes)
        shown = self.class_positions(wanted)  # every particle without classes
        if wanted is not None:
            outside = pos[~np.isin(pos, shown)]
            if len(outside):
                k = int(outside[0])
                raise RequestError(
                    400,
                    f"particle {k} is of class {int(self.particle_class(np.array([k]))[0])}, "
                    f"not of the classes shown ({', '.join(str(c) for c in wanted)})",
                )
        if rest:
            keep = np.zeros(len(self), bool)
            keep[shown] = True
            keep[pos] = False
            pos = np.flatnonzero(keep)
            if not len(pos):
                what = "particle" if wanted is None else "particle of the classes shown"
                raise RequestError(400, f"every {what} is selected: the rest is empty")
        source = self._input_rows()
        rows = selected_input_rows(self.table, pos)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stem = self.out_dir / name
        try:
            paths = write_selection(rows, stem, source)
        except OutputExistsError as e:
            raise RequestError(409, f"{e} (choose another name)") from None
        return {
            "count": int(len(rows)),
            "total": len(self),
            "rest": bool(rest),
            "paths": [str(p) for p in paths],
            "input_rows": [int(r) for r in rows] if len(rows) <= MAX_LISTED else None,
            "note": source.note,
            "next_name": self.next_name(),
            "next_rest": self.next_name("rest"),
        }


# ----------------------------------------------------------------------------- runs


def find_runs(path: str | Path) -> dict[str, Path]:
    """``path`` itself when it is a run (it has config.json), else the runs directly inside
    it, by folder name. None found is an error."""
    p = Path(path)
    if not p.is_dir():
        raise InputError(p, "no such run directory" if not p.exists() else "not a directory")
    if (p / CONFIG).exists():
        return {p.resolve().name: p}
    runs = {c.name: c for c in sorted(p.iterdir()) if c.is_dir() and (c / CONFIG).exists()}
    if not runs:
        raise InputError(p, f"is not an emvae run directory (no {CONFIG}) and holds none")
    return runs


class Runs:
    """The runs one app serves, each loaded (:class:`Explorer`) when first asked for."""

    def __init__(self, path: str | Path, device: torch.device, out_dir: str | Path | None):
        self.paths = find_runs(path)
        self.device = device
        self.out_dir = None if out_dir is None else Path(out_dir)
        self._loaded: dict[str, Explorer] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Explorer:
        """The explorer of run ``name``, loaded on first use; a 404 for an unknown name."""
        if name not in self.paths:
            raise RequestError(
                404, f"no run named {name!r} here (runs: {', '.join(self.paths) or 'none'})"
            )
        with self._lock:
            if name not in self._loaded:
                out = None
                if self.out_dir is not None:
                    out = self.out_dir if len(self.paths) == 1 else self.out_dir / name
                try:
                    self._loaded[name] = Explorer(Run.open(self.paths[name]), self.device, out)
                except EmvaeError as e:
                    raise RequestError(409, f"run {name!r} cannot be loaded: {e}") from None
            return self._loaded[name]
