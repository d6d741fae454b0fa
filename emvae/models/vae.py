"""The spatial-VAE: inference network + coordinate transform + generator."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emvae.augment import rotate_images
from emvae.config import PASS_MEMORY_MB, ModelConfig
from emvae.ctf import apply_ctf, phase_flip
from emvae.geometry import coordinate_grid, mask_index, rotation_matrix
from emvae.models.encoder import (
    AlignedContentEncoder,
    ConvEncoder,
    EquivariantEncoder,
    MLPEncoder,
    RotatedCopies,
)
from emvae.models.generator import (
    BroadcastGenerator,
    ClassSpatialGenerator,
    FourierFeatures,
    SpatialGenerator,
    VanillaGenerator,
)
from emvae.models.transform import DeformTransform, RigidTransform, affine_forward
from emvae.objective import Stage
from emvae.stages import encoder_view, fourier_crop

POSE_LOGSTD_OFFSET = math.log(0.1)


@dataclass
class RotationBins:
    """A posterior over R rotation bins (B images), or over K classes and R bins jointly.

    ``log_q`` ``(B, K R)``: log q(class, bin | y), normalised over all K R cells (cell
    ``c R + r`` is bin r of class c; K = ``classes`` = 1 without classes); ``theta``
    ``(B, K R)``: the mean model angle (radians, the generator's theta) within each cell;
    ``logstd`` ``(B, K R)``: its log-std. Only the ``k`` most probable bins of each class are
    used (:meth:`top`): the variational posterior is q restricted to them and renormalised, so
    the ELBO sums over them exactly.
    """

    log_q: Tensor
    theta: Tensor
    logstd: Tensor
    classes: int = 1

    def top(self, k: int) -> tuple[Tensor, Tensor]:
        """Cell indices ``(B, K k)`` of the k most probable bins of each class (most probable
        first) and their log probabilities renormalised over those, ``(B, K k)``."""
        if self.classes == 1:
            log_q, idx = self.log_q.topk(k, dim=1)
            return idx, log_q.log_softmax(1)
        b, n = self.log_q.shape
        r = n // self.classes
        log_q, idx = self.log_q.view(b, self.classes, r).topk(k, dim=2)  # (B, K, k)
        idx = idx + torch.arange(self.classes, device=idx.device).unsqueeze(1) * r
        log_q, order = log_q.flatten(1).sort(1, descending=True)
        return idx.flatten(1).gather(1, order), log_q.log_softmax(1)

    def cell_class(self, idx: Tensor) -> Tensor:
        """The class (0-based) of cell indices ``idx`` (any shape, from :meth:`top`)."""
        return torch.div(idx, self.log_q.shape[1] // self.classes, rounding_mode="floor")

    def class_log_prob(self) -> Tensor:
        """log q(class | y) ``(B, K)``: the cells' probabilities summed over the bins."""
        b = self.log_q.shape[0]
        return self.log_q.view(b, self.classes, -1).logsumexp(2)

    def concentration(self, k: int) -> Tensor:
        """``(B,)`` the posterior probability of the most probable bin (among the k used) of the
        most probable cell's class."""
        idx, log_w = self.top(k)
        if self.classes == 1:
            return log_w[:, 0].exp()
        cls = self.cell_class(idx)
        same = (cls == cls[:, :1]).to(log_w.dtype)
        w = log_w.exp()
        return w[:, 0] / (w * same).sum(1)

    def float(self) -> RotationBins:
        """The same posterior in float32 (after a bf16 autocast pass)."""
        return RotationBins(
            self.log_q.float(), self.theta.float(), self.logstd.float(), self.classes
        )


@dataclass
class Posterior:
    """q(z, pose | y): diagonal Gaussian over z ``(B, K)`` and pose ``(B, P)`` (means and
    log-stds). With a binned rotation posterior, ``bins`` holds it and ``pose_mu``/
    ``pose_logstd`` describe its most probable bin (theta) and the shift there."""

    z_mu: Tensor
    z_logstd: Tensor
    pose_mu: Tensor
    pose_logstd: Tensor
    bins: RotationBins | None = None
    # --pose affine: the fitted prior N(nu, diag(tau^2)) on (log s_x, log s_y, shear) as
    # (nu ``(3,)``, log tau ``(3,)``); None otherwise
    affine_prior: tuple[Tensor, Tensor] | None = None
    # the learned prior p(z | s) = N(0, diag(s^2)): log s ``(K,)`` (``--prior hyperprior``),
    # None for the standard N(0, I)
    z_prior_logstd: Tensor | None = None
    # the classes' learned prior: log p(c) ``(K,)`` (normalised; ``--classes`` > 1), else None
    class_log_prior: Tensor | None = None

    def best_class(self) -> Tensor | None:
        """``(B,)`` the most probable class (0-based) of each image; None without classes."""
        if self.bins is None or self.bins.classes == 1:
            return None
        return self.bins.class_log_prob().argmax(1)

    def float(self) -> Posterior:
        """The same posterior in float32 (the ELBO is computed in float32 under autocast)."""
        z_mu, z_logstd, pose_mu, pose_logstd = (
            t.float() for t in (self.z_mu, self.z_logstd, self.pose_mu, self.pose_logstd)
        )
        bins = None if self.bins is None else self.bins.float()
        prior = None if self.z_prior_logstd is None else self.z_prior_logstd.float()
        affine = None
        if self.affine_prior is not None:
            affine = (self.affine_prior[0].float(), self.affine_prior[1].float())
        classes = None if self.class_log_prior is None else self.class_log_prior.float()
        return Posterior(z_mu, z_logstd, pose_mu, pose_logstd, bins, affine, prior, classes)


#: Bytes of generator activations per rendered pixel, hypothesis and hidden unit in a
#: training pass (the values kept for the backward pass; measured: 2.9 KB per pixel and
#: hypothesis for the 2 x 128 generator on a CPU, i.e. about 8 per unit of its 3 layers), and
#: the share of it an inference pass holds (measured: encoding 512 images of 128 px with a
#: 1024-MB pass memory peaked 2.4 GB above the model at a share of 0.25, with or without the
#: CTF: 0.58 per image; docs/benchmarks.md).
PASS_BYTES_PER_UNIT = 12
INFERENCE_SHARE = 0.6


class SpatialVAE(nn.Module):
    """Model of paper section 2, rebuilt from a :class:`ModelConfig` alone.

    Images are ``(B, C, D, D)``; the generator's output is ``(B, D*D, n_out)`` in row-major
    pixel order (see :func:`emvae.geometry.coordinate_grid`).
    """

    coords: Tensor  # (D*D, 2) pixel coordinates (buffers)
    pixel_index: Tensor  # (N,) the pixels inside the mask (only with one)

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d, c = config.image_size, config.channels
        self.transform: RigidTransform = (
            RigidTransform(config.rotation, config.translation)
            if config.pose == "rigid"
            else DeformTransform(
                config.rotation,
                config.translation,
                config.affine,
                config.tps_grid if config.tps else 0,
            )
        )
        self.binned = config.binned
        self.theta_vector = config.rotation and not self.binned and config.theta_param == "vector"
        # z from the pose network itself ("shared", the paper's, and whenever no pose is
        # inferred: then the image is its own aligned view) or from the aligned image
        shared = config.z_encoder == "shared" or config.n_pose == 0
        self.shared_z = config.zdim if shared else 0
        self.encoder = build_encoder(config, self._pose_outputs())
        assert config.enc_hidden is not None  # filled in by ModelConfig.__post_init__
        self.content = (
            AlignedContentEncoder(config.encoder_px, c, config.enc_hidden, config.zdim)
            if config.zdim > 0 and not self.shared_z
            else None
        )
        self.generator = build_generator(config)
        # --prior hyperprior: log s of p(z | s) = N(0, diag(s^2)), learned (s = 1 at the start)
        self.z_prior_logstd = (
            nn.Parameter(torch.zeros(config.zdim)) if config.prior == "hyperprior" else None
        )
        # --pose affine: seed 004's prior on (log s_x, log s_y, shear), mean and log-std fitted
        self.affine_prior_mean: nn.Parameter | None = None
        self.affine_prior_logstd: nn.Parameter | None = None
        if config.affine:
            self.affine_prior_mean = nn.Parameter(torch.zeros(3))
            init = math.log(config.affine_prior_std)
            self.affine_prior_logstd = nn.Parameter(torch.full((3,), init))
        # --classes K: the logits of the classes' prior p(c), learned (uniform at the start)
        self.class_prior_logits = (
            nn.Parameter(torch.zeros(config.classes)) if config.classes > 1 else None
        )
        self.register_buffer("coords", coordinate_grid(d, d), persistent=False)
        # The likelihood sees only pixels inside the circular mask (all pixels without one);
        # the spatial generator is evaluated on those coordinates alone, unless the CTF (a
        # convolution) needs the whole rendering first (emvae.objective.with_ctf masks after).
        self.masked = config.mask_radius_px is not None
        self.render_all = config.ctf == "on"
        if config.mask_radius_px is not None:
            inside = mask_index(d, config.mask_radius_px)
            self.register_buffer("pixel_index", inside, persistent=False)
        self.n_pixels = d * d
        self.channels = c
        self.render_size = d  # the box the generator renders and the likelihood compares
        # memory a pass of the generator may use (SpatialVAE.images_per_pass); fit sets it
        self.pass_memory_mb = PASS_MEMORY_MB
        # True: training passes run the pose and z networks without gradients (a stage after
        # the first, TrainConfig.fine_train "generator"); fit sets it per epoch
        self.inference_frozen = False
        # True: encode runs the rotation search (ModelConfig.pose_search); the tables' passes
        # set it (table_poses: emvae.encode.encode, the report's and explorer's particles),
        # training, class seeding and the test ELBO do not
        self.searching = False
        # --classes: the class (0-based) renderings without a given class show (rendering_class)
        self.shown_class: int | None = None

    def set_render_size(self, size: int) -> None:
        """Render and compare at ``size`` px (a coarse-to-fine stage, :mod:`emvae.stages`): the
        generator is evaluated at the pixels of the images' Fourier crop to that size (in the
        full box's units, so poses keep their meaning), the mask keeps its radius in full-box
        pixels, and the Fourier features above the stage's Nyquist frequency are switched off
        (their weights set to 0, so that they join the rendering smoothly at a finer stage).
        ``size`` = the config's image size restores the full box."""
        self._use_grid(size)
        features = getattr(self.generator, "features", None)
        if features is not None and features.band is not None:
            # a feature switched off starts from 0 when it comes
            off = torch.nonzero(features.band == 0).squeeze(1) + 2  # after x, y: cos, sin
            columns = torch.cat([off, off + len(features.band)])
            first = self.generator.coord_linear
            assert isinstance(first, nn.Linear)
            with torch.no_grad():
                first.weight[:, columns] = 0.0

    @contextlib.contextmanager
    def table_poses(self, on: bool = True) -> Iterator[None]:
        """Within this block (with ``on``), :meth:`encode` searches the rotations as the
        particle tables do (``ModelConfig.pose_search``, :mod:`emvae.search`; it then needs
        the likelihood's CTFs)."""
        before, self.searching = self.searching, on
        try:
            yield
        finally:
            self.searching = before

    @contextlib.contextmanager
    def rendering_at(self, size: int) -> Iterator[None]:
        """Within this block, render and compare at ``size`` px as :meth:`set_render_size` does,
        but leave every weight as it is (the features above the size's Nyquist frequency are
        only masked); the render size before is restored after."""
        before = self.render_size
        self._use_grid(size)
        try:
            yield
        finally:
            self._use_grid(before)

    def _use_grid(self, size: int) -> None:
        """The coordinates, masked pixels and feature band of a ``size``-px rendering."""
        from emvae.stages import stage_grid

        d = self.config.image_size
        dev = self.coords.device
        self.coords = (coordinate_grid(d, d) if size == d else stage_grid(d, size)).to(dev)
        if self.masked and self.config.mask_radius_px is not None:
            radius = self.coords.double().square().sum(-1).sqrt() * ((d - 1) / 2)
            inside = torch.nonzero(radius <= self.config.mask_radius_px).squeeze(1)
            self.pixel_index = inside.to(dev)
        self.n_pixels = size * size
        self.render_size = size
        features = getattr(self.generator, "features", None)
        if features is not None:
            nyquist = 0.5 * size / d * ((d - 1) / 2)  # cycles per coordinate unit
            features.limit(None if size == d else nyquist)

    @property
    def stage(self) -> Stage:
        """What the likelihood needs of the current render size (:class:`Stage`)."""
        from emvae.stages import noise_logstd

        d, size = self.config.image_size, self.render_size
        keep = self.pixel_index if self.masked else None
        return Stage(size, keep, noise_logstd(d, size) if size != d else None)

    def _pose_outputs(self) -> int:
        """Width of the flat output of an MLP or conv pose network: per rotated copy for
        rotation bins (:class:`RotatedCopies`), else z (when shared) and Gaussian pose means
        (theta as a 2-vector with ``theta_param="vector"``), then their log-stds."""
        if self.binned:
            return RotatedCopies.outputs(self.config.classes, self.config.n_deform)
        return 2 * (self.shared_z + self.transform.n_params) + int(self.theta_vector)

    def encode(
        self,
        images: Tensor,
        gamma: Tensor | None = None,
        infer_z: bool = True,
        ctf: Tensor | None = None,
    ) -> Posterior:
        """q(z, pose | images). images ``(B, C, D, D)``; the networks see their
        ``encoder_px`` copy (:func:`emvae.stages.encoder_view`), filtered by each image's CTF
        ``ctf`` ``(B, 10)`` (multiplied or phase-flipped) when the model says so
        (``ModelConfig.encoder_needs_ctf``; ``ctf`` is then required).

        With ``gamma`` ``(B,)`` (radians), the pose network sees each image rotated
        counter-clockwise by gamma and gamma is added back to the predicted theta, so the
        posterior still describes the original image (rotation augmentation, paper section 4.3).
        z is then inferred from the original image turned and shifted back by the posterior
        mean pose (:class:`AlignedContentEncoder`), unless the pose network shares it. Without
        ``infer_z`` (z held at 0 during the z-delay) that network does not run: z's posterior is
        then N(0, 1) placeholders. While :attr:`searching` (the tables' passes) and
        ``ModelConfig.pose_search`` > 0, the angle is then searched under the generator
        (:mod:`emvae.search`; ``ctf``: the likelihood's) and z taken at the angle found.
        """
        raw = images
        if self.config.encoder_needs_ctf:
            if ctf is None:
                raise ValueError("this model's pose and z networks see each image filtered by "
                                 "its CTF: pass the images' CTFs")  # fmt: skip
            flip = self.config.encoder_ctf == "flip"
            images = (phase_flip(images, ctf) if flip else apply_ctf(images, ctf)).to(images.dtype)
        images = encoder_view(images, self.config.encoder_px)
        seen = images if gamma is None else rotate_images(images, gamma)
        q = self._encode_bins(seen, gamma) if self.binned else self._encode_gaussian(seen, gamma)
        self._infer_content(q, images, infer_z)
        if self.searching and self.config.pose_search:
            from emvae.search import search_rotation, turn_pose

            if ctf is None and self.config.ctf == "on":
                raise ValueError("the rotation search compares each image with its rendering "
                                 "through its CTF: pass the images' CTFs")  # fmt: skip
            z = q.z_mu if infer_z else torch.zeros_like(q.z_mu)
            best = q.best_class()
            delta = search_rotation(self, raw, z, q.pose_mu, ctf, best)
            delta = delta.to(q.pose_mu.dtype)
            q.pose_mu = turn_pose(q.pose_mu, delta[:, None], self.config.translation)[:, 0]
            if q.bins is not None:  # the best class's hypotheses turned alike (shifts follow)
                turn = delta[:, None].expand_as(q.bins.theta)
                if best is not None:
                    cells = torch.arange(q.bins.theta.shape[1], device=turn.device)
                    turn = turn * (q.bins.cell_class(cells)[None, :] == best[:, None])
                q.bins.theta = q.bins.theta + turn.to(q.bins.theta.dtype)
            self._infer_content(q, images, infer_z)  # z from the image aligned at the new pose
        q.z_prior_logstd = self.z_prior_logstd
        if self.affine_prior_mean is not None and self.affine_prior_logstd is not None:
            q.affine_prior = (self.affine_prior_mean, self.affine_prior_logstd)
        if self.class_prior_logits is not None:
            q.class_log_prior = self.class_prior_logits.log_softmax(0)
        return q

    def _infer_content(self, q: Posterior, images: Tensor, infer_z: bool) -> None:
        """Fill z's posterior from the content network (when z has its own) at q's pose
        mean; N(0, 1) placeholders without ``infer_z``. images: the networks' view."""
        if self.content is None:
            return
        if not infer_z:
            q.z_mu = q.z_logstd = q.pose_mu.new_zeros(q.pose_mu.shape[0], self.config.zdim)
            return
        angle, shift = self.image_frame_pose(q.pose_mu)
        aligned = self.unwarp(images, q.pose_mu) if self.config.tps else None
        q.z_mu, q.z_logstd = self.content(
            images, angle, shift, self.image_frame_deform(q.pose_mu), aligned
        )

    @torch.no_grad()
    def unwarp(self, images: Tensor, pose: Tensor) -> Tensor:
        """The images ``(B, C, D, D)`` brought back to the canonical frame by the whole pose
        ``(B, P)``, spline included: output pixel v samples the image (bilinearly, 0 outside)
        at the x the generator maps onto v, with the spline inverted to first order
        (``u = v - f(v)``), then the affine and rigid parts exactly (``x = (u M - dx)
        R(theta)^T``). z's network sees this with ``--pose tps``."""
        b, d = pose.shape[0], self.config.image_size
        pose = pose.float()
        v = self.coords.float().expand(b, -1, -1)
        t = self.transform
        assert isinstance(t, DeformTransform) and t.tps is not None
        affine, disp = t.deform_parts(pose)
        assert disp is not None
        w = v - t.tps(v, disp)
        if affine is not None:
            w = w @ affine_forward(affine)
        theta, shift = t.split(pose)
        if shift is not None:
            w = w - shift.unsqueeze(1)
        if theta is not None:
            w = w @ rotation_matrix(theta).transpose(-1, -2)
        grid = torch.stack([w[..., 0], -w[..., 1]], -1).reshape(b, d, d, 2)  # torch: y down
        out = F.grid_sample(
            images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        return out.to(images.dtype)

    def image_frame_deform(self, pose: Tensor) -> Tensor | None:
        """The object's own affine deformation ``M`` ``(B, 2, 2)`` (row vectors, canonical
        frame; :func:`emvae.models.transform.affine_forward`) at pose ``(B, P)``, or None
        without the affine part. The spline is not undone."""
        if not self.config.affine:
            return None
        r = self.config.n_pose
        return affine_forward(pose[:, r : r + 3])

    def image_frame_pose(self, pose: Tensor) -> tuple[Tensor, Tensor]:
        """Model pose ``(B, P)`` -> (counter-clockwise angle ``(B,)`` radians, image-frame
        shift ``(B, 2)`` coordinate units): where the canonical view lies in the image, i.e.
        ``-theta`` and ``-dx R(theta)^T`` (solve ``x R(theta) + dx = 0``; docs/conventions.md, "What
        the tables report (image frame)")."""
        n = pose.shape[0]
        theta = pose[:, 0] if self.config.rotation else pose.new_zeros(n)
        if not self.config.translation:
            return -theta, pose.new_zeros(n, 2)
        r = int(self.config.rotation)
        dx = pose[:, r : r + 2]
        shift = -(dx.unsqueeze(1) @ rotation_matrix(theta).transpose(-1, -2)).squeeze(1)
        return -theta, shift

    def _encode_gaussian(self, seen: Tensor, gamma: Tensor | None) -> Posterior:
        """Gaussian pose posterior from an MLP or conv pose network (the paper's)."""
        out = self.encoder(seen)
        k = self.shared_z
        n_mean = k + self.transform.n_params + int(self.theta_vector)
        mu, logstd = out[:, :n_mean], out[:, n_mean:]
        pose_mu, pose_logstd = mu[:, k:], logstd[:, k:] + POSE_LOGSTD_OFFSET
        if self.theta_vector:  # theta = atan2 of two outputs: continuous over the full circle
            theta = torch.atan2(pose_mu[:, 1:2], pose_mu[:, :1])
            pose_mu = torch.cat([theta, pose_mu[:, 2:]], 1)
        if gamma is not None and self.config.rotation:
            pose_mu = torch.cat(
                [pose_mu[:, :1] + gamma.unsqueeze(1).to(mu.dtype), pose_mu[:, 1:]], 1
            )
        return Posterior(mu[:, :k], logstd[:, :k], pose_mu, pose_logstd)

    def _encode_bins(self, seen: Tensor, gamma: Tensor | None) -> Posterior:
        """Rotation bins (:class:`BinnedPose`, from the equivariant encoder or rotated copies);
        the shift is converted to the template frame at the most probable bin's angle
        (``dx = -s R(theta)``, see geometry). z is left empty for the content encoder."""
        r, k = self.config.rotation_bins, self.config.classes
        out = self.encoder(seen)
        z_mu = z_logstd = seen.new_zeros(seen.shape[0], 0)
        centres = torch.arange(r, device=seen.device, dtype=out.offset.dtype) * (2 * math.pi / r)
        # image-frame counter-clockwise angle -> model theta (cell c R + r: bin r's centre)
        theta = -(centres.repeat(k) + out.offset)
        shift = out.shift
        if gamma is not None:  # the network saw the image rotated counter-clockwise by gamma
            g = gamma.to(theta.dtype)
            theta = theta + g.unsqueeze(1)
            shift = (shift.unsqueeze(1) @ rotation_matrix(g).transpose(-1, -2)).squeeze(1)
        logits = out.logits.to(torch.promote_types(out.logits.dtype, torch.float32))
        bins = RotationBins(logits.log_softmax(1), theta, out.angle_logstd + POSE_LOGSTD_OFFSET, k)
        best = bins.log_q.argmax(1, keepdim=True)
        if k > 1:  # the best bin of the most probable class (the table's class)
            cls = bins.class_log_prob().argmax(1, keepdim=True)  # (B, 1)
            in_class = bins.log_q.view(-1, k, r).gather(1, cls[:, :, None].expand(-1, 1, r))
            best = cls * r + in_class[:, 0].argmax(1, keepdim=True)
        theta_best = theta.gather(1, best)  # (B, 1)
        pose_mu, pose_logstd = [theta_best], [bins.logstd.gather(1, best)]
        if self.config.translation:
            dx = -(shift.unsqueeze(1) @ rotation_matrix(theta_best[:, 0])).squeeze(1)
            pose_mu.append(dx.to(theta.dtype))
            pose_logstd.append((out.shift_logstd + POSE_LOGSTD_OFFSET).expand(-1, 2))
        if out.extra is not None and out.extra_logstd is not None:  # canonical frame: as seen
            pose_mu.append(out.extra.to(theta.dtype))
            pose_logstd.append((out.extra_logstd + POSE_LOGSTD_OFFSET).to(theta.dtype))
        return Posterior(z_mu, z_logstd, torch.cat(pose_mu, 1), torch.cat(pose_logstd, 1), bins)

    def decode(
        self,
        z: Tensor,
        pose: Tensor,
        full: bool = False,
        pixels: Tensor | None = None,
        classes: Tensor | None = None,
    ) -> Tensor:
        """Generator output ``(B, N, n_out)`` for z ``(B, K)`` and pose ``(B, P)``; with
        several hypotheses per image, pose ``(B, k, P)`` gives ``(B, k, N, n_out)``.

        N is every pixel with ``full`` or without a mask, else the masked pixels (the ones
        :meth:`pixels` returns), in row-major order; ``pixels`` ``(N,)``: these row-major
        indices only (the likelihood's random subset, ``--pixel-fraction``). ``classes``: the
        class (0-based) of each rendering, ``(B,)`` or ``(B, k)`` (needed with ``--classes``
        > 1; see :meth:`latent`).
        """
        if pose.dim() == 3:
            b, k = pose.shape[:2]
            c = None if classes is None else classes.flatten()
            flat = self.decode(z.repeat_interleave(k, 0), pose.flatten(0, 1), full, pixels, c)
            unflat: Tensor = flat.unflatten(0, (b, k))
            return unflat
        z = self.latent(z, classes)
        part = self.masked and not full and not self.render_all
        index = pixels if pixels is not None else (self.pixel_index if part else None)
        out: Tensor
        if not self.generator.uses_coordinates:
            out = self.generator(None, z)
        elif getattr(self.generator, "full_grid", False):  # the broadcast CNN: every pixel
            out = self.generator(self.transform(self.coords, pose), z)
        else:
            grid = self.coords if index is None else self.coords[index]
            rendered: Tensor = self.generator(self.transform(grid, pose), z)
            return rendered
        result: Tensor = out if index is None else out[:, index]
        return result

    def latent(self, z: Tensor, classes: Tensor | None) -> Tensor:
        """The generator's latent input ``(B, K + C)``: z ``(B, K)`` and the one-hot of each
        rendering's class ``classes`` ``(B,)`` (0-based) with C = ``--classes`` > 1; z alone with
        one class."""
        n = self.config.classes
        if n == 1:
            return z
        if classes is None and self.shown_class is not None:
            classes = torch.full((z.shape[0],), self.shown_class, device=z.device)
        if classes is None:
            raise ValueError(f"a model of {n} classes renders a given class: pass classes")
        return torch.cat([z, F.one_hot(classes.long(), n).to(z.dtype)], 1)

    @contextlib.contextmanager
    def rendering_class(self, c: int | None) -> Iterator[None]:
        """Within this block, renderings not given their classes show class ``c`` (0-based;
        the montages of one class). None: no change."""
        before = self.shown_class
        self.shown_class = c if c is not None else before
        try:
            yield
        finally:
            self.shown_class = before

    def pixels(self, images: Tensor, subset: Tensor | None = None) -> Tensor:
        """The likelihood's targets: ``(B, C, D, D)`` -> ``(B, N, C)`` (masked pixels only, or
        the row-major indices ``subset``); images of the full box are first cut to the render
        size (:func:`emvae.stages.fourier_crop`)."""
        y = images_to_pixels(fourier_crop(images, self.render_size))
        if subset is not None:
            return y[:, subset]
        return y[:, self.pixel_index] if self.masked else y

    def pixel_sample(self, fraction: float, rng: torch.Generator | None) -> Tensor:
        """A random ``fraction`` of the likelihood's pixels (the masked ones, or all), as
        row-major indices ``(M,)`` on the model's device, drawn without replacement."""
        dev = self.coords.device
        universe = self.pixel_index if self.masked else torch.arange(self.n_pixels, device=dev)
        m = max(1, math.ceil(fraction * len(universe)))
        return universe[torch.randperm(len(universe), generator=rng, device=dev)[:m]]

    def images_per_pass(self, training: bool = True, pixels: int | None = None) -> int:
        """How many images one forward (and backward) pass may render so that the
        generator's activations stay within :attr:`pass_memory_mb`: a batch is split into
        passes of this many images. ``pixels``: the pixels rendered per image (default: the
        render size's, all of them with the CTF, else the masked ones)."""
        cfg = self.config
        p = pixels or (
            self.n_pixels if self.render_all or not self.masked else len(self.pixel_index)
        )
        k = cfg.n_hypotheses
        width = (cfg.gen_hidden or 1) * ((cfg.gen_layers or 1) + 1)
        share = 1.0 if training else INFERENCE_SHARE
        per_image = PASS_BYTES_PER_UNIT * p * k * width * share
        return max(1, int(self.pass_memory_mb * 2**20 // per_image))

    @property
    def n_latent(self) -> int:
        """K + P: the width of the noise :meth:`sample` needs per image."""
        return self.config.zdim + self.transform.n_params

    def forward(
        self,
        images: Tensor,
        gamma: Tensor | None = None,
        eps: Tensor | None = None,
        use_z: bool = True,
        pixels: Tensor | None = None,
        ctf: Tensor | None = None,
    ) -> tuple[Posterior, Tensor]:
        """Encode, sample with noise ``eps`` ``(B, K + P)``, decode: (posterior, generator
        output ``(B, N, n_out)``, or ``(B, k, N, n_out)`` for the k hypotheses of a binned
        rotation posterior). z is held at 0 without ``use_z`` (the z-delay). ``pixels``: render
        only these row-major pixel indices (N of them; see :meth:`decode`); ``ctf`` ``(B, 10)``:
        each image's CTF, for the encoder (:meth:`encode`). The one call
        DistributedDataParallel wraps."""
        with torch.no_grad() if self.inference_frozen else contextlib.nullcontext():
            q = self.encode(images, gamma, infer_z=use_z, ctf=ctf)
        z, pose = self.sample(q, use_z=use_z, eps=eps)
        return q, self.decode(z, pose, pixels=pixels, classes=self.hypothesis_classes(q))

    def hypothesis_classes(self, q: Posterior) -> Tensor | None:
        """The class (0-based) of each hypothesis :meth:`sample` draws, ``(B, K k)``; None
        without classes."""
        if q.bins is None or q.bins.classes == 1:
            return None
        return q.bins.cell_class(q.bins.top(self.config.hypotheses)[0])

    def sample(
        self,
        q: Posterior,
        rng: torch.Generator | None = None,
        use_z: bool = True,
        eps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One reparameterised sample (z, pose); z is 0 when ``use_z`` is False (z-delay).

        ``eps`` ``(B, K + P)`` standard normal noise, drawn here from ``rng`` when not given.
        With rotation bins, pose is ``(B, k, P)``: one hypothesis for each of the k most
        probable bins (of each class, ``(B, K k, P)``, with classes; the same noise for all;
        the shift is sampled in the image frame and expressed in each hypothesis's template
        frame)."""
        if eps is None:
            eps = torch.randn(
                q.pose_mu.shape[0], self.n_latent, generator=rng, device=q.pose_mu.device
            )
        eps = eps.to(q.pose_mu.dtype)
        k = q.z_mu.shape[1]
        z = q.z_mu + torch.exp(q.z_logstd) * eps[:, :k]
        if not use_z:
            z = torch.zeros_like(z)
        pose = q.pose_mu + torch.exp(q.pose_logstd) * eps[:, k:]
        if q.bins is None:
            return z, pose
        idx, _ = q.bins.top(self.config.hypotheses)
        theta = q.bins.theta.gather(1, idx) + q.bins.logstd.gather(1, idx).exp() * eps[:, k : k + 1]
        parts = [theta.unsqueeze(-1)]
        if self.config.translation:  # dx_h = dx R(theta_h - theta_best)
            turn = rotation_matrix(theta - q.pose_mu[:, :1])  # (B, k, 2, 2)
            parts.append((pose[:, None, None, 1:3] @ turn).squeeze(2))
        r = self.config.n_pose
        if pose.shape[1] > r:  # affine / spline parameters: the same in every hypothesis
            parts.append(pose[:, None, r:].expand(-1, theta.shape[1], -1))
        return z, torch.cat(parts, -1)

    def canonical(self, z: Tensor, classes: Tensor | None = None) -> Tensor:
        """Generator output at theta = 0, dx = 0 for z ``(B, K)`` (of classes ``(B,)``, 0-based,
        with ``--classes`` > 1): ``(B, N, n_out)``."""
        pose = z.new_zeros(z.shape[0], self.transform.n_params)
        return self.decode(z, pose, full=True, classes=classes)


def build_encoder(cfg: ModelConfig, n_out: int) -> nn.Module:
    """The pose network on ``cfg.encoder_px``-px images; ``n_out`` is the flat output width of
    an MLP or conv network (per rotated copy with rotation bins)."""
    n_in = cfg.channels * cfg.encoder_px**2
    assert cfg.enc_hidden is not None  # filled in by ModelConfig.__post_init__
    net: nn.Module | None = None
    if cfg.encoder == "mlp":
        net = MLPEncoder(n_in, cfg.enc_hidden, cfg.enc_layers, n_out, cfg.activation)
    if cfg.encoder == "conv":
        width = cfg.enc_channels * cfg.rotation_bins
        net = ConvEncoder(
            cfg.encoder_px,
            cfg.channels,
            width,
            cfg.enc_hidden,
            cfg.enc_layers,
            n_out,
            cfg.activation,
        )
    if net is not None:
        if cfg.binned:
            return RotatedCopies(net, cfg.rotation_bins, cfg.translation, cfg.n_deform, cfg.classes)
        return net
    if cfg.encoder == "equivariant":
        return EquivariantEncoder(
            cfg.encoder_px,
            cfg.channels,
            cfg.enc_channels,
            cfg.rotation_bins,
            cfg.enc_hidden,
            cfg.translation,
            cfg.n_deform,
            cfg.classes,
        )
    raise ValueError(cfg.encoder)  # unreachable after validate()


def build_generator(cfg: ModelConfig) -> nn.Module:
    """The generator ``cfg.generator`` names (spatial, vanilla or broadcast), sized by ``cfg``;
    its latent input is z and, with ``--classes`` > 1, the class's one-hot."""
    # filled in by ModelConfig.__post_init__
    assert cfg.gen_hidden is not None and cfg.gen_layers is not None
    latent = cfg.zdim + cfg.class_inputs
    if cfg.generator == "spatial":
        features = None
        if cfg.fourier_features:  # cycles per pixel -> cycles per coordinate unit
            per_unit = cfg.fourier_scale * (cfg.image_size - 1) / 2
            features = FourierFeatures(cfg.fourier_features, per_unit)
        if cfg.class_inputs and cfg.class_generator == "separate":
            return ClassSpatialGenerator(
                cfg.zdim, cfg.classes, cfg.gen_hidden, cfg.gen_layers, cfg.n_out,
                cfg.activation, features,
            )  # fmt: skip
        return SpatialGenerator(
            latent, cfg.gen_hidden, cfg.gen_layers, cfg.n_out, cfg.activation, features
        )
    if cfg.generator == "vanilla":
        return VanillaGenerator(
            cfg.zdim, cfg.gen_hidden, cfg.gen_layers, cfg.image_size**2, cfg.n_out, cfg.activation
        )
    if cfg.generator == "broadcast":
        return BroadcastGenerator(
            latent, cfg.image_size, cfg.gen_hidden, cfg.gen_layers, cfg.n_out, "relu"
        )
    raise ValueError(cfg.generator)  # unreachable after validate()


def images_to_pixels(images: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)`` in the generator's pixel order."""
    return images.flatten(2).transpose(1, 2)


def pixels_to_images(pixels: Tensor, size: int) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``."""
    b, _, c = pixels.shape
    return pixels.transpose(1, 2).reshape(b, c, size, size)
