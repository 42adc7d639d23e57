"""qbench: a plugin-based benchmark harness for quantization surrogates in
learned image compression.

Public API: :class:`Quantizer`, :class:`Surrogate`, :class:`Quantized`, :data:`hookimpl`,
:class:`Backbone`, :class:`ImageDataset`, :class:`Logger`, :class:`Metric` (with :class:`ImageEval`,
:class:`JobEval`, :class:`ProbeEval` and :class:`Estimate`), and the modules
``qbench.bdrate`` and ``qbench.conformance``.
"""

import warnings as _warnings

# CompressAI scripts a function with torch.jit.script at import time, which torch 2.x
# deprecates with a FutureWarning on every qbench command; it is not ours to fix.
with _warnings.catch_warnings():
    _warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from qbench.analysis import Estimate
    from qbench.backbone import Backbone
    from qbench.hookspecs import hookimpl
    from qbench.images import ImageDataset, load_image
    from qbench.logger import Logger
    from qbench.metric import ImageEval, JobEval, Metric, ProbeEval
    from qbench.quantizer import Quantized, Quantizer, Surrogate

from qbench.version import __version__

__all__ = [
    "Backbone",
    "Estimate",
    "ImageDataset",
    "ImageEval",
    "JobEval",
    "Logger",
    "Metric",
    "ProbeEval",
    "Quantized",
    "Quantizer",
    "Surrogate",
    "__version__",
    "hookimpl",
    "load_image",
]
