"""qbench's version and the name of its distribution on the package index.

The import package, the command and the entry-point group are ``qbench``; the
distribution is ``qbench-lic`` (``pip install qbench-lic``), because the name
``qbench`` on the package index belongs to an unrelated project.
"""

from importlib import metadata as _metadata

#: The distribution's name on the package index (``pip install qbench-lic``).
DISTRIBUTION = "qbench-lic"

try:
    __version__ = _metadata.version(DISTRIBUTION)
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"
