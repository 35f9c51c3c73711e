"""recfunnel: a multi-stage recommender (recall -> pre-rank -> rank -> re-rank) on MovieLens-1M."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recfunnel")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
