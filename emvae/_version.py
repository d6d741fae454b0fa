"""The installed package's version (from its metadata), for modules below the package root."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emvae")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
