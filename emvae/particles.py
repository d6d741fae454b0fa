"""The particles of a run: the images the user named, as the model sees them, and the way back.

A :class:`Particles` owns an opened stack, its resolved preprocessing and normalisation (the
``data`` section of ``config.json``, :class:`emvae.config.DataConfig`) and the mapping back to
the input rows. It is opened once from the user's inputs (:meth:`Particles.open`) or re-opened
from a run's config (:meth:`Particles.like`: encode, montage, align, resume, the benchmarks); it
loads or streams the images, gives each particle's CTF, builds the particle table and writes
the STAR file beside it.

    particles = Particles.open("particles.star", datadir="Extract/")
    x = particles.load(device)          # (N, C, D, D) float32, normalised
    table = particles.table(model_config, encoding)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emvae.config import DataConfig, ModelConfig
from emvae.ctf import ctf_params, read_ctf_table
from emvae.data import (
    StreamedImages,
    load_images,
    normalize_,
    should_stream,
    stream_statistics,
    tensor_statistics,
)
from emvae.errors import ConfigError, InputError
from emvae.geometry import model_to_image_pose, pixels_per_unit, shift_std_to_image
from emvae.io import open_stack
from emvae.io.stack import ImageStack
from emvae.io.star_export import Optics, export_table
from emvae.junk import junk_probability
from emvae.preprocess import Prepared, Preprocess, prepare_for
from emvae.progress import TrainingProgress

if TYPE_CHECKING:
    from emvae.encode import Encoding

Specs = Sequence[str | os.PathLike[str]] | str | os.PathLike[str]


@dataclass
class Particles:
    """``stack``: the opened inputs; ``data``: where they came from and how they are prepared
    and normalised (``mean``/``std`` None until measured by :meth:`load`); ``prepared``: the
    preprocessing planned for ``stack`` (nothing is read until :meth:`load`)."""

    stack: ImageStack
    data: DataConfig
    prepared: Prepared

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        specs: Specs,
        *,
        datadir: str | os.PathLike[str] | None = None,
        ind: str | os.PathLike[str] | None = None,
        apix: float | None = None,
        preprocess: Preprocess | None = None,
        likelihood: str | None = None,
        normalize: bool | None = None,
        ctf_params: str | os.PathLike[str] | None = None,
    ) -> Particles:
        """Every input the user named, concatenated, subset by ``ind`` (0-based), with ``apix``
        (Å) forced when given. ``preprocess`` None: the defaults of the input kind (pictures:
        the Galaxy Zoo window, see :meth:`Preprocess.for_input`); ``likelihood`` None: the
        input's (Bernoulli for pictures, else Gaussian)."""
        pre = preprocess or Preprocess.for_inputs(specs)
        stack = open_images(specs, pre, datadir, ind, apix)
        return cls.of(stack, likelihood, normalize, pre, ctf_params)

    @classmethod
    def of(
        cls,
        stack: ImageStack,
        likelihood: str | None = None,
        normalize: bool | None = None,
        preprocess: Preprocess | None = None,
        ctf_params: str | os.PathLike[str] | None = None,
    ) -> Particles:
        """An opened stack, described for a new run (nothing is read; :meth:`load` measures
        the normalisation on the preprocessed images, :meth:`check_trainable` the
        fingerprint).

        Gaussian likelihood: images are standardised (mean 0, std 1 over the stack) unless
        ``normalize=False``. Bernoulli: pixels must lie in [0, 1] and are not changed. An emvae
        cache is used as it was preprocessed (other preprocessing options are an error).
        """
        likelihood = likelihood or stack.likelihood
        if normalize is None or likelihood == "bernoulli":
            normalize = likelihood == "gaussian"
        pre = preprocess or Preprocess()
        if stack.preprocessed is not None:
            if pre.active:
                raise ConfigError(
                    f"{stack.source} is already preprocessed by emvae preprocess; give the "
                    "preprocessing options there, not here"
                )
            pre = Preprocess.from_dict(stack.preprocessed)
        prepared = prepare_for(stack, pre.to_dict())
        data = DataConfig(
            **_stack_fields(stack),
            paths=list(stack.inputs) or [stack.source],
            normalize=normalize,
            preprocess=pre.to_dict(),
            scale=prepared.scale,
            ctf_params=None if ctf_params is None else str(ctf_params),
        )
        return cls(stack, data, prepared)

    @classmethod
    def described(cls, stack: ImageStack, data: DataConfig) -> Particles:
        """``stack`` prepared as a run's data section ``data`` describes (``--resume``)."""
        return cls(stack, data, prepare_for(stack, data.preprocess))

    @classmethod
    def like(
        cls,
        data: DataConfig,
        specs: Specs | None = None,
        datadir: str | os.PathLike[str] | None = None,
        ind: str | os.PathLike[str] | None = None,
        apix: float | None = None,
    ) -> Particles:
        """Images prepared the way a run (``data``: its config's data section) prepared its own:
        the same pictures' windows (crop, jitter, seed), preprocessing and normalisation.

        Without ``specs``: the run's own inputs (its ``datadir`` and ``--ind`` too), which must
        still hold the images it was fitted on. With ``specs``: other images (``emvae encode``),
        described by their own pixel size, box and CTF."""
        pre = Preprocess.from_dict(data.preprocess)
        own = specs is None
        if specs is None:
            if not data.paths:
                raise InputError("(run)", "the run does not record its input images")
            specs, datadir, ind = list(data.paths), data.datadir, data.ind
        stack = open_images(specs, pre, datadir, ind, apix)
        if own and data.n_images and len(stack) != data.n_images:
            raise InputError(
                stack.source, f"now holds {len(stack)} images; the run had {data.n_images}"
            )
        if not own:
            fields = _stack_fields(stack) | {"fingerprint": "", "ctf_params": None}
            data = dataclasses.replace(data, paths=list(stack.inputs), **fields)
        return cls.described(stack, data)

    # ------------------------------------------------------------------ what they are

    def check_trainable(self) -> None:
        """A new run needs two images (one is held out) and records the stack's fingerprint
        (what ``--resume`` checks)."""
        if len(self) < 2:
            raise InputError(
                self.source,
                f"holds {len(self)} image; training needs at least 2 (one is held out for testing)",
            )
        self.data.fingerprint = self.data.fingerprint or fingerprint(self.stack)

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def size(self) -> int:
        """The model's box (px) after preprocessing."""
        return self.prepared.size

    @property
    def channels(self) -> int:
        """Channels of the prepared images."""
        return self.prepared.channels

    @property
    def source(self) -> str:
        """The input, as named in messages."""
        return self.stack.source

    def describe(self) -> list[tuple[str, str]]:
        """``(label, text)`` lines for ``emvae info``: format, count, box, pixel size and its
        origin, the stacks read, STAR optics and metadata, the value range (from at most
        :data:`DESCRIBE_SAMPLE` images spread over the stack), the memory a fit needs."""
        st, n = self.stack, len(self.stack)
        size = f"{st.size} x {st.size} px" + (
            f" (from {st.input_size} px)" if st.input_size else ""
        )
        lines = [
            ("source", st.source),
            ("format", st.format),
            ("images", f"{n:,}"),
            ("image size", size),
            ("channels", str(st.channels)),
            ("dtype", str(np.dtype(st.images.dtype))),
        ]
        if st.apix:
            px = f"{st.apix:.4g} A/px (from the {st.apix_from})"
            if st.scale != 1:
                px += f"; {st.apix * st.scale:.4g} A/px after preprocessing"
            lines.append(("pixel size", px))
        elif st.arcsec_per_px:
            px = f"{st.arcsec_per_px:.6g} arcsec/px (from the {st.arcsec_from})"
            if st.scale != 1:
                px += f"; {st.arcsec_per_px * st.scale:.6g} arcsec/px after preprocessing"
            lines.append(("pixel scale", px))
        else:
            lines.append(("pixel size", "unknown (give --apix)"))
        files = [str(s.path) for s in getattr(st.images, "parts", ()) if hasattr(s, "path")]
        if files:  # the stacks a STAR / .cs / .txt file named, as found (--datadir first)
            more = f", ... ({len(files)} files)" if len(files) > 3 else ""
            lines.append(("stacks read", ", ".join(files[:3]) + more))
        if st.star_version:
            lines.append(("STAR version", f"RELION {st.star_version}"))
        if st.optics is not None:
            keys = ("rlnOpticsGroup", "rlnImagePixelSize", "rlnImageSize", "rlnVoltage")
            cols = [k for k in keys if k in st.optics]
            rows = "; ".join(
                ", ".join(f"{k.removeprefix('rln')}={r[k]}" for k in cols)
                for _, r in st.optics.iterrows()
            )
            lines.append(("optics groups", f"{len(st.optics)}: {rows}"))
        if st.metadata is not None:
            cols = list(map(str, st.metadata.columns))
            more = f" ... ({len(cols)} in all)" if len(cols) > 10 else ""
            lines.append(("metadata columns", ", ".join(cols[:10]) + more))
        if st.preprocessed is not None:
            done = {k: v for k, v in st.preprocessed.items() if v not in (None, False, 0, "none")}
            lines.append(("preprocessed", ", ".join(f"{k}={v}" for k, v in done.items()) or "-"))
        lines.append(("values", _value_range(st)))
        gib = st.nbytes_float32() / 2**30
        lines.append(("memory (float32)", f"{gib:.3g} GiB for the whole stack at this size"))
        lines += [("note", note) for note in st.notes]
        return lines

    def check_model(self, model: ModelConfig) -> None:
        """The images must have the model's box and channels."""
        if model.image_size != self.size or model.channels != self.channels:
            raise ConfigError(
                f"{self.source}: images become {self.channels}x{self.size}^2 but the model "
                f"is for {model.channels}x{model.image_size}^2"
            )

    # ------------------------------------------------------------------ the images

    def load(
        self,
        device: torch.device | str = "cpu",
        likelihood: str = "gaussian",
        stream: str = "off",
        bar: TrainingProgress | None = None,
    ) -> Tensor | StreamedImages:
        """The preprocessed, normalised images ``(N, C, D, D)`` float32 on ``device`` (or, when
        ``stream`` says so (on, off, auto), read from disk batch by batch:
        :class:`StreamedImages`). A new run's normalisation (``data.mean``/``std`` None) is
        measured here first. ``bar``: shows the reading's progress."""
        device = torch.device(device)
        measure = self.data.mean is None
        if should_stream(self.prepared, len(self), stream, device):
            if measure:
                self._measure(stream_statistics(self.stack, self.prepared), likelihood)
            mean, std = self.data.mean or 0.0, self.data.std or 1.0
            return StreamedImages(self.stack, self.prepared, mean, std)
        progress = None if bar is None else bar.task("reading images", len(self))
        x = load_images(self.stack, device, self.prepared, progress)
        if measure:
            self._measure(tensor_statistics(x), likelihood)
        return normalize_(x, self.data.mean or 0.0, self.data.std or 1.0)

    def images(self, indices: np.ndarray) -> Tensor:
        """The images at 0-based ``indices`` as the model sees them (preprocessed and
        normalised, on the CPU): ``(n, C, D, D)`` float32. Needs the normalisation measured
        (a run's particles, :meth:`like`) or ``data.normalize`` off."""
        idx = np.asarray(indices, dtype=np.int64)
        x = torch.from_numpy(self.prepared.apply(self.stack.images[idx], idx))
        return (x - (self.data.mean or 0.0)) / (self.data.std or 1.0)

    def _measure(self, stats: tuple[float, float, float, float], likelihood: str) -> None:
        """Fill ``data.mean``/``std`` from the preprocessed images' (mean, std, min, max)."""
        mean, std, lo, hi = stats
        d = self.data
        if likelihood == "bernoulli":
            if lo < 0 or hi > 1:
                raise InputError(
                    self.source,
                    f"pixel values span [{lo:.3g}, {hi:.3g}]; the "
                    "Bernoulli likelihood needs values in [0, 1]",
                )
            d.normalize = False
        if d.normalize and not std > 0:
            raise InputError(self.source, "every pixel has the same value; nothing to learn")
        d.mean, d.std = (mean, std) if d.normalize else (0.0, 1.0)

    def ctf_mode(self, choice: str = "auto") -> tuple[str, str | None]:
        """What ``--ctf`` ``choice`` means for these particles, and why an "auto" is "off"
        when the input carries some CTF fields (None otherwise). "auto" is "on" with
        ``--ctf-params`` or when the input carries complete CTF parameters and a pixel size."""
        if choice != "auto":
            return choice, None
        if self.data.ctf_params:  # asked for by name: missing fields are errors
            return "on", None
        st = self.stack
        if st.metadata is None or not ("rlnDefocusU" in st.metadata or "ctf/df1_A" in st.metadata):
            return "off", None
        try:
            ctf_params(st.metadata, st.optics, st.apix or 1.0, st.source)
            if not st.apix:
                raise InputError(st.source, "no pixel size (give --apix)")
        except InputError as e:
            return "off", str(e)
        return "on", None

    def ctf(self, mode: str) -> np.ndarray | None:
        """Each particle's CTF parameters ``(N, 10)`` (:mod:`emvae.ctf`) at the model's pixel
        size (the input's × ``prepared.scale``), or None when ``mode`` is "off". From the
        ``--ctf-params`` CSV when the run has one, else from the STAR / .cs rows; a missing
        field is one error naming it."""
        if mode == "off":
            return None
        meta = self.stack.metadata
        if self.data.ctf_params:
            rows = None if self.stack.ind is None else np.asarray(self.stack.rows)
            meta = read_ctf_table(self.data.ctf_params, len(self), rows)
        apix = None if self.data.apix is None else self.data.apix * self.prepared.scale
        return ctf_params(meta, self.stack.optics, apix, self.source, required=True)

    # ------------------------------------------------------------------ the way back

    def table(
        self, model: ModelConfig, enc: Encoding, split: np.ndarray | None = None
    ) -> pd.DataFrame:
        """The table users read, one row per image in input order, from an
        :class:`emvae.encode.Encoding` of these images (docs/conventions.md, "What the tables
        report (image frame)").

        Shifts are in pixels of the *input* images: the model's shifts times
        ``prepared.scale`` (input pixels per model pixel, after ``-D``), plus
        ``prepared.offsets`` (where the model box's centre lies in each input image, +x right,
        +y up; crops and the downsampling grid move it), so they describe the particle in the
        file the user gave.

        Columns: ``image`` (``k@file``, 1-based), ``input_row`` (0-based row in the input: STAR
        or .cs row, or position in the stack(s)), ``theta_deg`` (counter-clockwise rotation of
        the particle relative to the canonical view, +y up; equals RELION's rlnAnglePsi) and
        ``theta_std_deg``, ``shift_x_px``/``shift_y_px`` (where the canonical centre lands,
        relative to the box centre, +x right, +y up) and their stds, ``shift_x_A``/
        ``shift_y_A`` when the pixel size is known (``shift_x_arcsec``/``shift_y_arcsec``, along
        the pixel axes, for FITS images whose WCS gives the pixel scale on the sky),
        ``theta_prob`` (the posterior probability of the reported rotation bin, with rotation
        bins: low values flag unreliable poses; with classes, the bin's probability within the
        particle's class), ``class`` (1-based, as RELION's class numbers) and ``class_prob``
        (its posterior probability) with ``--classes`` > 1, ``z1..zK``, ``z1_std..zK_std``,
        ``elbo`` (nats), ``ncc`` (the image's correlation with the model's rendering of it) and
        ``junk`` (the junk score, a calibrated probability: :mod:`emvae.junk`) with the ELBO,
        and ``split`` when given. Pose variables that were not inferred are reported as 0 with
        std 0. With ``--pose affine``:
        ``scale_x``, ``scale_y`` (the particle's size along the canonical view's own x and y
        axes relative to it, factors) and ``shear`` (dimensionless), with ``log_scale_x_std``,
        ``log_scale_y_std`` and ``shear_std`` (posterior stds of log s and of the shear); with
        ``--pose tps``: ``tps_max_px`` and ``tps_rms_px``, the largest and the root-mean-square
        displacement of the spline's control points (canonical frame, input pixels).
        """
        n = len(self)
        zeros = torch.zeros(n, 3, dtype=torch.float64)
        pose = torch.from_numpy(enc.pose_mu).double()
        pose_std = torch.from_numpy(enc.pose_std).double()
        r = int(model.rotation)
        theta = pose[:, 0] if model.rotation else zeros[:, 0]
        theta_std = pose_std[:, 0] if model.rotation else zeros[:, 0]
        shift = pose[:, r : r + 2] if model.translation else zeros[:, :2]
        sstd = pose_std[:, r : r + 2] if model.translation else zeros[:, :2]
        scale, offsets = self.prepared.scale, self.prepared.offsets
        theta_deg, shift_px = model_to_image_pose(theta, shift, model.image_size)
        shift_std_px = shift_std_to_image(theta, sstd, model.image_size) * scale
        shift_px = shift_px * scale
        if offsets is not None:
            shift_px = shift_px + torch.from_numpy(np.asarray(offsets, dtype=np.float64))
        rows = self.stack.rows
        x, y = shift_px[:, 0].numpy(), shift_px[:, 1].numpy()
        cols: dict[str, object] = {
            "image": list(self.stack.names),
            "input_row": np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64),
            "theta_deg": theta_deg.numpy(),
            "theta_std_deg": np.degrees(theta_std.numpy()),
            "shift_x_px": x,
            "shift_y_px": y,
            "shift_x_std_px": shift_std_px[:, 0].numpy(),
            "shift_y_std_px": shift_std_px[:, 1].numpy(),
        }
        cols.update(deform_columns(model, pose, pose_std, scale))
        if self.data.apix is not None:
            cols["shift_x_A"], cols["shift_y_A"] = x * self.data.apix, y * self.data.apix
        elif self.data.arcsec_per_px is not None:  # sky images: along the pixel axes
            sky = self.data.arcsec_per_px
            cols["shift_x_arcsec"], cols["shift_y_arcsec"] = x * sky, y * sky
        if enc.theta_prob is not None:
            cols["theta_prob"] = enc.theta_prob
        if enc.class_prob is not None:
            cols["class"] = enc.class_prob.argmax(1) + 1
            cols["class_prob"] = enc.class_prob.max(1)
        cols.update({f"z{k + 1}": enc.z_mu[:, k] for k in range(model.zdim)})
        cols.update({f"z{k + 1}_std": enc.z_std[:, k] for k in range(model.zdim)})
        cols["elbo"] = enc.elbo
        if enc.ncc is not None and np.isfinite(enc.ncc).any():
            cols["ncc"] = enc.ncc
            groups = None if enc.class_prob is None else enc.class_prob.argmax(1)
            cols["junk"] = junk_probability(np.c_[enc.elbo, enc.ncc], groups)
        if split is not None:
            cols["split"] = split
        return pd.DataFrame(cols)

    def write_star(self, table: pd.DataFrame, path: str | os.PathLike[str]) -> str:
        """``table``'s poses as a STAR file: the input STAR's rows and columns (when the input
        was one) with emvae's poses; RELION 3.1 layout, or 3.0 (origins in pixels) when the
        pixel size is unknown. A cryoSPARC input's voltage, Cs and amplitude contrast fill the
        optics group. Returns the layout written."""
        stack = self.stack
        star = stack.star_version is not None
        return export_table(
            table,
            path,
            self.data.input_size or int(stack.input_size or stack.size),
            self.data.apix,
            stack.metadata if star else None,
            stack.optics if star else None,
            defaults=None if star else _cryosparc_optics(stack.metadata),
        )


def deform_columns(
    model: ModelConfig, pose: torch.Tensor, pose_std: torch.Tensor, scale: float = 1.0
) -> dict[str, np.ndarray]:
    """The particle table's affine and spline columns (see :meth:`Particles.table`) from the
    posterior means and stds ``(N, P)`` (layout of
    :class:`emvae.models.transform.DeformTransform`); ``scale``: input pixels per model pixel.
    Empty for the rigid pose."""
    cols: dict[str, np.ndarray] = {}
    r = model.n_pose
    if model.affine:
        mu, sd = pose[:, r : r + 3].numpy(), pose_std[:, r : r + 3].numpy()
        cols["scale_x"], cols["scale_y"], cols["shear"] = (
            np.exp(mu[:, 0]),
            np.exp(mu[:, 1]),
            mu[:, 2],
        )
        cols["log_scale_x_std"], cols["log_scale_y_std"] = sd[:, 0], sd[:, 1]
        cols["shear_std"] = sd[:, 2]
        r += 3
    if model.tps:
        disp = pose[:, r:].unflatten(1, (-1, 2)).norm(dim=-1)  # (N, g^2) coordinate units
        px = disp * (pixels_per_unit(model.image_size) * scale)
        cols["tps_max_px"] = px.amax(1).numpy()
        cols["tps_rms_px"] = px.square().mean(1).sqrt().numpy()
    return cols


DESCRIBE_SAMPLE = 2000  # emvae info's value range: from at most this many images, spread out


def _value_range(stack: ImageStack) -> str:
    n = len(stack)
    idx = np.unique(np.linspace(0, n - 1, min(n, DESCRIBE_SAMPLE)).astype(np.int64))
    values = np.asarray(stack.images[idx], dtype=np.float64)
    finite = np.isfinite(values)
    shown = "all images" if len(idx) == n else f"{len(idx)} images spread over the stack"
    if finite.any():
        v = values[finite]
        text = f"{v.min():.4g} to {v.max():.4g}, mean {v.mean():.4g}, std {v.std():.4g} ({shown})"
    else:
        text = "no finite values"
    if not finite.all():
        text += f"; {int((~finite).sum())} NaN/infinite pixels"
    return text


def _stack_fields(stack: ImageStack) -> dict[str, Any]:
    """The data section's fields that ``stack`` itself gives: count, box, pixel size, subset."""
    same = ("apix", "apix_from", "arcsec_per_px", "datadir", "ind")  # same name in both
    size = {"n_images": len(stack), "input_size": stack.input_size or stack.size}
    return size | {k: getattr(stack, k) for k in same}


def open_images(
    specs: Specs,
    pre: Preprocess,
    datadir: str | os.PathLike[str] | None = None,
    ind: str | os.PathLike[str] | None = None,
    apix: float | None = None,
) -> ImageStack:
    """Open ``specs`` for the preprocessing ``pre``: pictures and FITS images are cut to its
    windows (crop, jitter, seed) as they are read; see :func:`emvae.io.open_stack`."""
    pre.validate()
    return open_stack(specs, datadir, ind, pre.crop, pre.jitter, pre.seed, apix)


def _cryosparc_optics(meta: pd.DataFrame | None) -> Optics | None:
    """Voltage, Cs and amplitude contrast of a cryoSPARC input (``ctf/*`` fields), if any."""
    fields = ("ctf/accel_kv", "ctf/cs_mm", "ctf/amp_contrast")
    if meta is None or not set(fields) <= set(meta.columns) or len(meta) == 0:
        return None
    return Optics(*(float(f"{float(meta[f].iloc[0]):.6g}") for f in fields))


def check_same(stack: ImageStack, data: DataConfig) -> None:
    """``stack`` must hold the images a run (``data``) was fitted on (``--resume``)."""
    size = stack.input_size or stack.size
    if len(stack) != data.n_images or size != data.input_size:
        raise InputError(
            stack.source,
            f"does not match the run being resumed "
            f"({data.n_images} images of {data.input_size} px)",
        )
    if data.fingerprint and fingerprint(stack) != data.fingerprint:
        raise InputError(
            stack.source,
            "is not the stack the run being resumed was fitted on (same count and size, "
            "other images or names)",
        )


def fingerprint(stack: ImageStack) -> str:
    """A digest of the image names and of the first, middle and last images' pixels: another
    stack of the same count and size has another fingerprint (``--resume`` compares them)."""
    h = hashlib.sha256("\n".join(stack.names).encode("utf-8", "surrogateescape"))
    n = len(stack)
    for i in sorted({0, n // 2, n - 1}):
        h.update(np.ascontiguousarray(stack.images[i : i + 1], dtype=np.float32).tobytes())
    return h.hexdigest()[:32]
