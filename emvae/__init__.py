"""emvae: spatial-VAE for particle stacks and galaxy images.

Public API: :class:`Particles` (a stack as a run sees it), :func:`fit`, :func:`encode`,
:class:`Run` (an output directory), :func:`read_stack` / :func:`open_stack`,
:func:`write_cache`, :func:`load_model`, the config dataclasses, :class:`Preprocess` and
:class:`SpatialVAE`.
"""

from emvae._version import __version__
from emvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from emvae.encode import encode
from emvae.errors import EmvaeError, InputError
from emvae.io import open_stack, read_stack
from emvae.models import SpatialVAE
from emvae.particles import Particles
from emvae.preprocess import Preprocess, write_cache
from emvae.run import Run, load_checkpoint, load_model
from emvae.train import fit

__all__ = [
    "DataConfig",
    "EmvaeError",
    "InputError",
    "ModelConfig",
    "Particles",
    "Preprocess",
    "Run",
    "RunConfig",
    "SpatialVAE",
    "TrainConfig",
    "__version__",
    "encode",
    "fit",
    "load_checkpoint",
    "load_model",
    "open_stack",
    "read_stack",
    "write_cache",
]
