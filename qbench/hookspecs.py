"""Hook specifications: the plugin author's manual.

A plugin is a module (or object) holding functions marked with
:data:`qbench.hookimpl` whose names are the hooks below. qbench loads plugins
from the ``qbench`` entry-point group; built-in plugins go through the same
path. A function whose name is not a hook here is rejected when the plugin
loads (pluggy validation).

Registration hooks receive a ``register(name, factory, **metadata)`` callback.
``factory(**params)`` builds the object from the parameters a matrix gives
(so its keyword arguments are the parameters a user may set). ``metadata``
carries at least an optional ``description``; quantizers may also declare
``differentiable=False`` (the ``round`` control) and ``parameters`` (a count
shown by ``qbench list``). Any factory may declare ``paths=("path", ...)``:
the parameters that name files or folders; qbench resolves them against the
matrix file's folder and identifies them by their content's fingerprint
(:func:`qbench.plan.jobs.fingerprint`), not by their spelling. The first
registration of a name wins; a later one is reported as a clash naming both
distributions.
"""

from __future__ import annotations

from typing import Any, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("qbench")
hookimpl = pluggy.HookimplMarker("qbench")


class Register(Protocol):
    """The callback handed to every ``qbench_register_*`` hook."""

    def __call__(self, name: str, factory: Any, **metadata: Any) -> None: ...


@hookspec
def qbench_register_quantizers(register: Register) -> None:
    """Register quantization surrogates.

    Called once per process when the registry is built. ``factory(**params)``
    must return a :class:`qbench.Quantizer`. The return value is ignored.
    """


@hookspec
def qbench_register_backbones(register: Register) -> None:
    """Register codec backbones.

    ``factory(**params)`` must return a :class:`qbench.Backbone`. The return
    value is ignored.
    """


@hookspec
def qbench_register_datasets(register: Register) -> None:
    """Register image datasets.

    ``factory(**params)`` must return a :class:`qbench.ImageDataset`: a
    sequence of RGB float tensors in [0, 1] of shape (3, H, W). The return
    value is ignored.
    """


@hookspec
def qbench_register_metrics(register: Register) -> None:
    """Register metrics.

    ``factory(**params)`` must return a :class:`qbench.Metric`, whose declared
    ``columns`` become columns of ``results.csv``. The return value is ignored.
    """


@hookspec
def qbench_register_loggers(register: Register) -> None:
    """Register live loggers (TensorBoard, W&B, Aim, ...).

    ``factory(**params)`` must return a :class:`qbench.Logger`; a matrix turns
    one on with ``[monitor] loggers = ["name"]``. A factory whose library is
    missing raises :class:`qbench.registry.QbenchError` naming the extra to
    install: the run stops before any job. The return value is ignored.
    """


@hookspec
def qbench_job_started(job: Any) -> None:
    """Called in the worker process just before ``job`` (a :class:`qbench.plan.jobs.Job`) runs.

    For loggers and progress reporters; the return value is ignored. An
    exception raised here is reported on stderr with the plugin's name; the
    job and the other plugins' hooks go on.
    """


@hookspec
def qbench_job_finished(job: Any, result: dict) -> None:
    """Called in the worker process after ``job`` finished, failed or diverged.

    ``result`` is the row written to ``results.csv`` (``status`` says which);
    the row is on disk before the hook is called. The return value is
    ignored; an exception is reported with the plugin's name and changes
    nothing of the row.
    """


@hookspec
def qbench_train_step(job: Any, step: int, stats: dict) -> None:
    """Called in the worker process every ``[train] log_every`` steps of a training.

    ``job`` is the first job of the train group being trained (the jobs of a
    group share one model); ``step`` counts optimisation steps done;
    ``stats`` holds ``progress`` (in [0, 1]), the step's training ``loss``,
    ``bpp``, ``mse`` and ``psnr`` (dB, of the training crops), and each
    quantizer's annealing state as ``"<latent>/<name>"`` (for example
    ``"y/tau"``; :meth:`qbench.Quantizer.annealing_state`). Not called when
    ``log_every`` is 0. For live monitoring: the return value is ignored and
    an exception is reported with the plugin's name, never failing the job.
    """
