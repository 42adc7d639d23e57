"""Start-up of the commands people type most, against ``python -c pass`` measured in the same run.

    python benchmarks/bench_startup.py [--repeat N] [--run-dir RUN]

Each command runs ``--repeat`` times in a fresh interpreter; the best time is
kept (the least disturbed by other work on the machine) and printed with its
ratio to the baseline ``python -c pass`` and its extra seconds. Targets:

* ``qbench --help``, ``qbench --version``, ``qbench status RUN``: under 0.5 s;
* ``qbench list`` (the catalogue cached: the second listing of the same
  plugins) and ``qbench report RUN --format csv``: no torch or CompressAI
  import (checked, and said, on every run);
* an unrelated one-test pytest run with qbench's conformance plugin installed,
  against the same run with the plugin disabled (``-p no:qbench_conformance``):
  under 0.2 s slower.

``RUN`` defaults to a copy of the committed ``results/quick`` run. No timing is
asserted anywhere; these numbers go into notes and issues.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Prints, after running argv[1:] as the qbench command line, which heavy modules it imported.
PROBE = (
    "import sys, io, contextlib\n"
    "from qbench.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main(sys.argv[1:])\n"
    "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'compressai'})))\n"
)


def best(argv: list[str], repeat: int, cwd: Path | None = None) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return min(times)


def heavy_imports(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    return done.stdout.strip() or "none"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--run-dir", help="a run directory for status and report")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="qbench-startup-"))
    run_dir = Path(args.run_dir) if args.run_dir else tmp / "quick"
    if not args.run_dir:
        shutil.copytree(ROOT / "results" / "quick", run_dir)
    (tmp / "test_unrelated.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    qbench = [sys.executable, "-m", "qbench.cli"]
    subprocess.run([*qbench, "list"], stdout=subprocess.DEVNULL)  # fill the catalogue cache

    base = best([sys.executable, "-c", "pass"], args.repeat)
    print(f"baseline python -c pass: {base:.3f} s (best of {args.repeat})\n")
    rows = [
        ("qbench --help", [*qbench, "--help"], ["--help"], 0.5),
        ("qbench --version", [*qbench, "--version"], ["--version"], 0.5),
        ("qbench status RUN", [*qbench, "status", str(run_dir)], ["status", str(run_dir)], 0.5),
        ("qbench list (cached)", [*qbench, "list"], ["list"], None),
        (
            "qbench report RUN --format csv",
            [*qbench, "report", str(run_dir), "--format", "csv"],
            ["report", str(run_dir), "--format", "csv"],
            None,
        ),
    ]
    print(f"{'command':34} {'seconds':>8} {'x pass':>7} {'+ s':>7}  target   heavy imports")
    for label, argv, probe_args, target in rows:
        t = best(argv, args.repeat)
        verdict = "" if target is None else ("met" if t < target else "MISSED")
        heavy = heavy_imports(probe_args) if not probe_args[0].startswith("--") else "none"
        goal = f"<{target:g} s" if target else "no torch"
        print(f"{label:34} {t:8.3f} {t / base:7.1f} {t - base:7.3f}  {goal:7} {verdict:6} {heavy}")

    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_unrelated.py"]
    with_plugin = best(pytest, args.repeat, cwd=tmp)
    without = best([*pytest, "-p", "no:qbench_conformance"], args.repeat, cwd=tmp)
    extra = with_plugin - without
    print(
        f"\nunrelated pytest run: {with_plugin:.3f} s with the conformance plugin, "
        f"{without:.3f} s without: +{extra:.3f} s "
        f"(target < 0.2 s: {'met' if extra < 0.2 else 'MISSED'})"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
