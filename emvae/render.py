"""The generator as a function of the user's pose: ``(z, theta_deg, shift_px) -> image``.

:class:`PosedGenerator` wraps a trained model's generator so that it takes the pose the way the
particle table reports it (docs/conventions.md, "What the tables report (image frame)"):

* ``theta_deg`` ``(B,)``: the canonical view turned **counter-clockwise** by this angle, in
  degrees (the table's ``theta_deg``, RELION's ``rlnAnglePsi``);
* ``shift_px`` ``(B, 2)``: where the canonical view's centre lands relative to the box centre,
  +x right, +y up, in pixels of the **model's** box (the table's ``shift_x_px``/``shift_y_px``
  are in input pixels: they differ by the downsampling factor and any crop offset);
* ``z`` ``(B, K)``: the latent (absent for a model with ``--zdim 0``); with ``--classes`` C > 1,
  ``(B, K + C)``: z, then the one-hot of the class to draw.

It returns the pixel means ``(B, C, D, D)``: normalised units for a Gaussian model, pixel
probabilities for a Bernoulli one, before any CTF and over the whole box (no mask). At
``theta_deg = 0`` and ``shift_px = 0`` it equals :func:`emvae.montage.decode_mean`.
With ``--pose affine|tps`` the rendering is at the identity deformation (scales 1, no shear, no
spline displacement): the canonical object under the rigid pose.
``emvae explore`` renders with it and ``emvae export-onnx`` writes it as an ONNX graph
(:func:`export_onnx`).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from emvae.errors import ConfigError, EmvaeError
from emvae.geometry import coordinate_grid, rotation_matrix
from emvae.models import SpatialVAE

#: The one line printed when ONNX export or its check is asked for without onnx.
ONNX_HINT = "install onnx, onnxscript and onnxruntime (pip install 'emvae[onnx]')"


class PosedGenerator(nn.Module):
    """A trained model's generator rendered at an image-frame pose (module docstring)."""

    coords: Tensor

    def __init__(self, model: SpatialVAE) -> None:
        super().__init__()
        cfg = model.config
        self.generator = model.generator
        self.zdim = cfg.zdim + cfg.class_inputs  # the generator's latent input
        self.size = cfg.image_size
        self.channels = cfg.channels
        self.bernoulli = cfg.likelihood == "bernoulli"
        #: False for the vanilla decoder, which draws a fixed frame (the pose is ignored)
        self.posed = bool(getattr(model.generator, "uses_coordinates", True))
        d = cfg.image_size
        self.register_buffer("coords", coordinate_grid(d, d), persistent=False)

    @property
    def input_names(self) -> list[str]:
        """The exported graph's input names, in order (no ``z`` without latent dimensions)."""
        return (["z"] if self.zdim else []) + ["theta_deg", "shift_px"]

    def forward(self, z: Tensor, theta_deg: Tensor, shift_px: Tensor) -> Tensor:
        """z ``(B, K)`` (``(B, 0)`` for K = 0), ``theta_deg`` ``(B,)``, ``shift_px`` ``(B, 2)``
        -> ``(B, C, D, D)``."""
        b = theta_deg.shape[0]
        if self.posed:
            # image frame -> model pose (emvae.geometry.image_to_model_pose), then x R + dx
            theta = theta_deg * (-math.pi / 180.0)
            rot = rotation_matrix(theta)  # (B, 2, 2)
            dx = -(shift_px * (2.0 / (self.size - 1))).unsqueeze(1) @ rot  # (B, 1, 2)
            grid = self.coords.unsqueeze(0) @ rot + dx  # (B, D*D, 2)
            params = self.generator(grid, z)
        else:
            params = self.generator(None, z)
        mean = params[..., : self.channels]
        if self.bernoulli:
            mean = torch.sigmoid(mean)
        d = self.size
        out: Tensor = mean.transpose(1, 2).reshape(b, self.channels, d, d)
        return out


class _WithoutZ(nn.Module):
    """The exported graph of a model without z: inputs ``theta_deg``, ``shift_px`` only."""

    def __init__(self, gen: PosedGenerator) -> None:
        super().__init__()
        self.gen = gen

    def forward(self, theta_deg: Tensor, shift_px: Tensor) -> Tensor:
        z = theta_deg.new_zeros(theta_deg.shape[0], 0)
        out: Tensor = self.gen(z, theta_deg, shift_px)
        return out


def _graph(model: SpatialVAE, batch: int) -> tuple[PosedGenerator, nn.Module, tuple[Tensor, ...]]:
    """The model's :class:`PosedGenerator` (a float32 CPU copy: the model stays put), the
    module the ONNX graph is (without a ``z`` input when K = 0), and ``batch`` random inputs of
    the right shapes for tracing or checking it."""
    gen = copy.deepcopy(PosedGenerator(model)).cpu().float().eval()
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(batch, generator=g) * 360.0 - 180.0
    shift = torch.randn(batch, 2, generator=g)
    if not gen.zdim:
        return gen, _WithoutZ(gen), (theta, shift)
    return gen, gen, (torch.randn(batch, gen.zdim, generator=g), theta, shift)


def require_onnx(*modules: str) -> None:
    """Stop with :data:`ONNX_HINT` unless every one of ``modules`` imports."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise EmvaeError(ONNX_HINT) from None


def export_onnx(model: SpatialVAE, path: str | os.PathLike[str], opset: int = 18) -> Path:
    """Write the model's :class:`PosedGenerator` (float32, CPU) to ``path`` as one ONNX file:
    inputs ``z`` ``(B, K)`` (when K > 0), ``theta_deg`` ``(B,)``, ``shift_px`` ``(B, 2)``;
    output ``image`` ``(B, C, D, D)``; B is a dynamic axis ``batch``."""
    require_onnx("onnx", "onnxscript")
    if opset < 18:
        raise ConfigError(f"--opset {opset}: torch's exporter writes opset 18 or later")
    path = Path(path)
    gen, graph, args = _graph(model, 2)
    batch = torch.export.Dim("batch", min=1)
    shapes = {name: {0: batch} for name in gen.input_names}
    quiet = logging.getLogger("torch.onnx")  # its notes on torchvision, absent here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            program = torch.onnx.export(
                graph,
                args,
                input_names=gen.input_names,
                output_names=["image"],
                dynamic_shapes=tuple(shapes[name] for name in gen.input_names),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise EmvaeError("torch.onnx.export returned nothing")
    path.parent.mkdir(parents=True, exist_ok=True)
    from emvae.safety import atomic_output

    with atomic_output(path) as tmp:
        program.save(str(tmp), external_data=False)
    return path


def check_onnx(model: SpatialVAE, path: str | os.PathLike[str], batch: int = 5) -> float:
    """Largest absolute difference between onnxruntime's output of the file at ``path`` and
    torch's :class:`PosedGenerator` for ``batch`` random inputs."""
    require_onnx("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    gen, graph, args = _graph(model, batch)
    with torch.no_grad():
        want = graph(*args).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: a.numpy() for name, a in zip(gen.input_names, args, strict=True)}
    (got,) = session.run(["image"], feed)
    return float(np.abs(np.asarray(got) - want).max())


def export_run(
    run: str | os.PathLike[str],
    out: str | os.PathLike[str],
    opset: int = 18,
    check: bool = True,
    force: bool = False,
) -> str:
    """``emvae export-onnx``: the generator of ``run`` (a run folder or a checkpoint) as the
    ONNX file ``out`` (:func:`export_onnx`), compared with torch in onnxruntime when
    ``check``; an existing ``out`` is refused unless ``force``. Returns the line that says
    what was written."""
    from emvae.run import CONFIG, LAST, load_model
    from emvae.safety import refuse_existing, refuse_inputs_as_outputs

    source, out = Path(run), Path(out)
    inputs = [source] if source.is_file() else [source / LAST, source / CONFIG]
    refuse_inputs_as_outputs([out], inputs)
    refuse_existing(out, force)
    require_onnx("onnx", "onnxscript", *(["onnxruntime"] if check else []))
    model, _, _ = load_model(source, "cpu")
    path = export_onnx(model, out, opset)
    k = model.config.zdim + model.config.class_inputs
    what = "z and the class's one-hot" if model.config.class_inputs else "z"
    names = (f"{what} (batch, {k}), " if k else "") + "theta_deg (batch,), shift_px (batch, 2)"
    c, d = model.config.channels, model.config.image_size
    line = f"wrote {path}: {names} -> image (batch, {c}, {d}, {d})"
    if check:
        line += f"; onnxruntime matches torch to {check_onnx(model, path):.1e}"
    return line
