"""Shared fixtures: the plugin registry, fake installed distributions, shared data."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
KODAK = Path(os.environ.get("QBENCH_TEST_KODAK", SHARED / "kodak"))
PHOTOS = Path(os.environ.get("QBENCH_TEST_PHOTOS", SHARED / "photos-train"))

needs_kodak = pytest.mark.skipif(
    not KODAK.is_dir(),
    reason=f"Kodak images not found at {KODAK} (set QBENCH_TEST_KODAK=/path/to/kodak)",
)


def pytest_configure(config):
    """Under ``pytest -n N`` each worker gets its share of the cores for torch's threads,
    and so do the qbench and pytest processes it starts (``OMP_NUM_THREADS``): N workers
    with a thread per core each oversubscribe the machine, and torch's threads then
    spin-wait for each other (a statistic took 6 times as long on 2 cores)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // int(workers))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` first (the order is otherwise kept): under ``pytest -n`` (work
    stealing, ``--dist worksteal`` in the settings) the long tests start early and the
    short ones fill the end, so no worker idles while another finishes a long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def plugins():
    from qbench.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="session")
def registry(plugins):
    return plugins.registry


def make_distribution(
    root: Path,
    dist: str,
    modules: dict[str, str],
    entry_points: dict[str, str],
    version: str = "0.1.0",
) -> Path:
    """Write an importable module set plus a real ``.dist-info`` under ``root``.

    ``importlib.metadata`` finds it once ``root`` is on ``sys.path`` (or PYTHONPATH),
    exactly as it finds a pip-installed distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "[qbench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(eps)
    return root


def pythonpath_with(root: Path) -> str:
    """``PYTHONPATH`` with ``root`` in front, for subprocesses and spawned workers."""
    return os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])


@pytest.fixture
def on_path(monkeypatch):
    """Put a folder on sys.path for this test only (and forget cached imports from it)."""
    added: list[str] = []

    def add(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))
        added.append(str(path))

    yield add
    for mod in list(sys.modules):
        f = getattr(sys.modules[mod], "__file__", None) or ""
        if any(f.startswith(a) for a in added):
            del sys.modules[mod]


@pytest.fixture
def install_plugin(tmp_path, monkeypatch, on_path):
    """``install(dist, {module: source}, {entry point: module})``: a plugin distribution
    visible to this process and to spawned workers, with the plugin registry reloaded
    (and reset again after the test)."""
    import qbench.plugins

    def install(dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
        root = make_distribution(tmp_path / "site", dist, modules, entry_points)
        on_path(root)
        monkeypatch.setenv("PYTHONPATH", pythonpath_with(root))
        qbench.plugins.reset()
        return root

    yield install
    qbench.plugins.reset()


def pip_install_target(package: Path | list[Path], target: Path) -> Path:
    """pip-install ``package`` (a real wheel build, no dependencies, no index) into ``target``;
    a list of packages is installed by one pip command."""
    packages = package if isinstance(package, list) else [package]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            *(str(p) for p in packages),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return target


pytest_plugins = ["pytester"]


def run_command(matrix, out, *extra: str) -> list[str]:
    """The argv of ``qbench run MATRIX --out OUT --no-progress EXTRA...`` in this interpreter."""
    return [
        sys.executable,
        "-m",
        "qbench.cli",
        "run",
        str(matrix),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]
