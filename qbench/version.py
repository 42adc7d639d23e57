"""qbench's version, as installed (``0+unknown`` in a source tree without install)."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("qbench")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"
