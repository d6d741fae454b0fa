"""Models: interchangeable encoder, coordinate transform and generator behind SpatialVAE."""

from emvae.models.encoder import MLPEncoder
from emvae.models.generator import SpatialGenerator, VanillaGenerator
from emvae.models.transform import RigidTransform
from emvae.models.vae import Posterior, SpatialVAE, images_to_pixels, pixels_to_images

build_model = SpatialVAE

__all__ = [
    "MLPEncoder",
    "Posterior",
    "RigidTransform",
    "SpatialGenerator",
    "SpatialVAE",
    "VanillaGenerator",
    "build_model",
    "images_to_pixels",
    "pixels_to_images",
]
