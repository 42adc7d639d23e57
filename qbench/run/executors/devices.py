"""How many job processes run on this machine at once, on which device, with how many threads.

Used by the local worker pool and by submitit's local executor alike, so that
both give identical rows.
"""

from __future__ import annotations

import os

import torch

from qbench.run.executors.base import Dispatch, ExecutorError

#: ``--workers 0``: no worker process, the groups run one after the other in qbench's own
IN_PROCESS = 0


def plan_devices(
    device: str, workers: int | None, groups: int = 1, jobs_per_gpu: int = 1
) -> list[tuple[str, str | None]]:
    """``[(torch device, CUDA_VISIBLE_DEVICES or None), ...]``, one entry per local worker.

    ``workers == 0`` runs in the qbench process itself (:data:`IN_PROCESS`): one entry,
    the first GPU or the CPU, with ``CUDA_VISIBLE_DEVICES`` as it is.

    GPUs: ``jobs_per_gpu`` workers per visible GPU (or ``workers``, spread
    round-robin). CPU: ``workers``, else as many one-core workers as there
    are cores and groups to run (two one-thread workers finished a 4-job
    matrix 1.33-1.41x sooner than one two-thread worker on 2 cores: small
    convolutions gain little from torch's intra-op threads).
    """
    if workers is not None and workers < 0:
        raise ExecutorError(f"--workers must be >= 0, got {workers}")
    if jobs_per_gpu < 1:
        raise ExecutorError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    if device not in ("auto", "cpu", "cuda"):
        raise ExecutorError(f"--device must be auto, cpu or cuda, got {device!r}")
    worker_threads()  # a bad $QBENCH_THREADS is known before any job
    n_gpu = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if device == "cuda" and n_gpu == 0:
        raise ExecutorError("--device cuda: no CUDA GPU is visible")
    if workers == IN_PROCESS:
        return [("cuda" if n_gpu else "cpu", None)]
    if n_gpu:
        n = workers or n_gpu * jobs_per_gpu
        return [("cuda", str(i % n_gpu)) for i in range(n)]
    return [("cpu", None)] * (workers or max(1, min(os.cpu_count() or 1, groups)))


def local_plan(dispatch: Dispatch, groups: int) -> list[tuple[str, str | None]]:
    """:func:`plan_devices` for this run, no more workers than ``groups`` (at least one)."""
    plan = plan_devices(dispatch.device, dispatch.workers, groups, dispatch.jobs_per_gpu)
    return plan[: max(1, groups)]


def worker_threads() -> int:
    """Torch threads per CPU worker: ``$QBENCH_THREADS``, else 1.

    One thread per worker and one worker per core (:func:`plan_devices`):
    on CPU a training is bit-reproducible only with the same threads (another
    count sums floats in another order, which a training amplifies), so a
    fixed default makes a job's numbers independent of the matrix it is part
    of and of the machine's core count. Recorded in the manifest;
    ``QBENCH_THREADS`` trades that for intra-op threads.
    """
    text = os.environ.get("QBENCH_THREADS", "").strip()
    if not text:
        return 1
    try:
        threads = int(text)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ExecutorError(f"QBENCH_THREADS must be a whole number of threads, got {text!r}")
    return threads or 1  # 0: the default
