"""qbench: a plugin-based benchmark harness for quantization surrogates in
learned image compression.

Public API: :class:`Quantizer`, :class:`Surrogate`, :class:`Quantized`, :data:`hookimpl`,
:class:`Backbone`, :class:`ImageDataset`, :class:`Logger`, :class:`Metric` (with :class:`ImageEval`,
:class:`JobEval`, :class:`ProbeEval` and :class:`Estimate`), and the modules
``qbench.bdrate`` and ``qbench.conformance``.

The names are imported on first use (PEP 562), so that ``import qbench`` and the
commands that need no model (``qbench --help``, ``status``, ``report``) do not pay
for importing torch and CompressAI.
"""

from __future__ import annotations

import importlib as _importlib
import warnings as _warnings
from typing import TYPE_CHECKING, Any

from qbench.version import __version__

# CompressAI scripts a function with torch.jit.script at import time, which torch 2.x
# deprecates with a FutureWarning on every qbench command; it is not ours to fix, and
# whichever module imports CompressAI first (ours or a plugin's), nobody needs to see it.
_warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)

#: ``{public name: module that defines it}``.
_LAZY = {
    "Estimate": "qbench.analysis",
    "Backbone": "qbench.backbone",
    "hookimpl": "qbench.hookspecs",
    "ImageDataset": "qbench.images",
    "load_image": "qbench.images",
    "Logger": "qbench.logger",
    "ImageEval": "qbench.metric",
    "JobEval": "qbench.metric",
    "Metric": "qbench.metric",
    "ProbeEval": "qbench.metric",
    "Quantized": "qbench.quantizer",
    "Quantizer": "qbench.quantizer",
    "Surrogate": "qbench.quantizer",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from qbench.analysis import Estimate
    from qbench.backbone import Backbone
    from qbench.hookspecs import hookimpl
    from qbench.images import ImageDataset, load_image
    from qbench.logger import Logger
    from qbench.metric import ImageEval, JobEval, Metric, ProbeEval
    from qbench.quantizer import Quantized, Quantizer, Surrogate


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qbench' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


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
