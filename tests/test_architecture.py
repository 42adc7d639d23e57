"""The house shows its line: the import graph of qbench/ and plugins/, and the size of rooms.

Layers, bottom to top: the core (contracts, maths, storage, registry: the
modules directly in ``qbench/``), then ``qbench/plan/``, then ``qbench/run/``
and ``qbench/report/`` beside each other, then the front door (``cli``,
``conformance``, the package ``__init__``). A module imports only modules of
its own layer or below; ``plan`` never imports ``run`` or ``report``, and
``report`` never imports ``run``. Imports under ``if TYPE_CHECKING:`` are not
imports at run time and are not counted. Built-in plugins use the public API
only: the core modules, never a wing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONT = {"qbench.cli", "qbench.conformance", "qbench"}
MAX_LINES = 80
MAX_PARAMS = 8
#: functions allowed to be long: the argparse builder (one add_argument per option)
LONG_OK = {("qbench/cli.py", "build_parser")}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in [*ROOT.glob("qbench/**/*.py"), *ROOT.glob("plugins/*.py")]:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "plugins":
            parts[0] = "qbench_plugins"
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                if f"{module}.{a.name}" in mods:
                    out.add(f"{module}.{a.name}")
                elif module in mods:
                    out.add(module)
    out.discard(name)
    return out


def _layer(name: str) -> int:
    if name in FRONT or name.startswith("qbench.conformance"):
        return 4
    if name.startswith(("qbench.run", "qbench.report")):
        return 2
    if name.startswith("qbench.plan"):
        return 1
    if name.startswith("qbench_plugins"):
        return 3
    return 0


GRAPH = {n: _imports(n, p, _modules()) for n, p in _modules().items()}


def test_the_import_graph_has_no_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(GRAPH[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_no_import_runs_back_up_and_the_wings_stay_apart():
    bad = []
    for n, targets in GRAPH.items():
        for t in targets:
            if t in ("qbench", "qbench.conformance") and n.startswith("qbench_plugins"):
                continue  # plugins use the public names of the package and the test suite
            up = _layer(t) > _layer(n) and not (_layer(n) == 3 and _layer(t) == 0)
            crossed = n.startswith("qbench.plan") and t.startswith(("qbench.run", "qbench.report"))
            crossed |= n.startswith("qbench.report") and t.startswith("qbench.run")
            crossed |= n.startswith("qbench.run") and t.startswith("qbench.report")
            plugin_wing = n.startswith("qbench_plugins") and _layer(t) in (1, 2)
            if up or crossed or plugin_wing:
                bad.append(f"{n} imports {t}")
    assert not bad, "\n".join(sorted(bad))


def test_no_function_is_too_long_or_takes_too_many_parameters():
    bad = []
    for path in sorted(ROOT.glob("qbench/**/*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            params = [p for p in params if p.arg not in ("self", "cls")]
            lines = node.end_lineno - node.lineno + 1
            if (rel, node.name) in LONG_OK:
                continue
            if lines > MAX_LINES:
                bad.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
            if len(params) > MAX_PARAMS:
                bad.append(f"{rel}:{node.lineno} {node.name}: {len(params)} parameters")
    assert not bad, "\n".join(bad)


def test_validate_imports_no_run_wing_worker_pool_or_submitit():
    code = (
        "import sys\n"
        "from qbench.plugins import get_plugins\n"
        "from qbench.plan.matrix import load_matrix\n"
        "from qbench.plan.preflight import preflight\n"
        "m = load_matrix(None, get_plugins().registry)\n"
        "preflight(m, get_plugins().registry)\n"
        "bad = sorted(k for k in sys.modules if k.startswith(('qbench.run', 'qbench.report',"
        " 'submitit', 'multiprocessing.pool')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
