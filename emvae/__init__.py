"""emvae: spatial-VAE for particle stacks and galaxy images.

Public API: :class:`Particles` (a stack as a run sees it), :func:`fit`, :func:`encode`,
:class:`Run` (an output directory), :func:`read_stack` / :func:`open_stack`,
:func:`write_cache`, :func:`load_model`, the config dataclasses, :class:`Preprocess` and
:class:`SpatialVAE`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emvae")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from emvae.checkpoint import load_checkpoint, load_model  # noqa: E402
from emvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from emvae.encode import encode  # noqa: E402
from emvae.errors import EmvaeError, InputError  # noqa: E402
from emvae.io import open_stack, read_stack  # noqa: E402
from emvae.models import SpatialVAE  # noqa: E402
from emvae.particles import Particles  # noqa: E402
from emvae.preprocess import Preprocess, write_cache  # noqa: E402
from emvae.run import Run  # noqa: E402
from emvae.train import fit  # noqa: E402

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
