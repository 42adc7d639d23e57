"""qbench: a plugin-based benchmark harness for quantization surrogates in
learned image compression.

Public API: :class:`Quantizer`, :class:`Quantized`, :data:`hookimpl`,
:class:`Backbone`, :class:`ImageDataset`, :class:`Metric`, and the modules
``qbench.bdrate`` and ``qbench.conformance``.
"""

from importlib import metadata as _metadata

from qbench.backbone import Backbone
from qbench.hookspecs import hookimpl
from qbench.images import ImageDataset, load_image
from qbench.metric import ImageEval, JobEval, Metric
from qbench.quantizer import Quantized, Quantizer

try:
    __version__ = _metadata.version("qbench")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "Backbone",
    "ImageDataset",
    "ImageEval",
    "JobEval",
    "Metric",
    "Quantized",
    "Quantizer",
    "__version__",
    "hookimpl",
    "load_image",
]
