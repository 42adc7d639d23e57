"""Job ids follow plugin code: an edited plugin re-runs its jobs, an unrelated edit none."""

from __future__ import annotations

import textwrap

import qbench.plugins
from qbench.plan.matrix import load_matrix
from qbench.provenance import code_digest, source_files
from qbench.run.runner import run_matrix

from .test_runner import tiny

SCALED_NOISE = '''
import torch
import qbench

SCALE = 1.0

class ScaledNoise(qbench.Quantizer):
    """Additive uniform noise of width SCALE in training, rounding at test time."""
    def forward(self, y, means=None):
        if not self.training:
            return super().forward(y, means)
        noisy = y + SCALE * (torch.rand_like(y) - 0.5)
        return qbench.Quantized(rate=noisy, dist=noisy)

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("{name}", ScaledNoise)
'''


def _package(root, files):
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_digest_covers_the_module_and_what_it_imports_from_its_package(tmp_path, on_path):
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/shared.py": "X = 1\n",
            "pkg/alone.py": "Y = 2\n",
            "pkg/user.py": "from .shared import X\n\ndef f():\n    from pkg import deep\n",
            "pkg/deep/__init__.py": "from . import leaf\n",
            "pkg/deep/leaf.py": "Z = 3\n",
        },
    )
    on_path(tmp_path)
    names = {f.relative_to(tmp_path).as_posix() for f in source_files("pkg.user")}
    assert names == {
        "pkg/__init__.py",
        "pkg/user.py",
        "pkg/shared.py",
        "pkg/deep/__init__.py",  # imported inside a function
        "pkg/deep/leaf.py",  # relative import, one package down
    }
    before = {m: code_digest(m) for m in ("pkg.user", "pkg.alone", "pkg.shared")}
    (tmp_path / "pkg/shared.py").write_text("X = 10  # edited\n")
    after = {m: code_digest(m) for m in before}
    assert after["pkg.shared"] != before["pkg.shared"]
    assert after["pkg.user"] != before["pkg.user"]  # it imports the edited module
    assert after["pkg.alone"] == before["pkg.alone"]  # it does not
    # the digest is of content, not of modification times
    (tmp_path / "pkg/shared.py").write_text("X = 10  # edited\n")
    assert code_digest("pkg.user") == after["pkg.user"]


def test_the_built_in_plugins_have_independent_digests():
    assert code_digest("qbench_plugins.uniform") != code_digest("qbench_plugins.sga")
    steps = {f.name for f in source_files("qbench_plugins.steps")}
    assert "uniform.py" in steps  # steps reuses uniform's unit surrogates
    assert "sga.py" not in steps
    assert code_digest("not_a_module_anywhere") == ""


def test_editing_a_plugin_re_runs_its_jobs_and_only_its_own(tmp_path, install_plugin):
    install_plugin(
        "qbench-scaled",
        {
            "scaled_a": SCALED_NOISE.replace("{name}", "scaled-a"),
            "scaled_b": SCALED_NOISE.replace("{name}", "scaled-b"),
        },
        {"scaled_a": "scaled_a", "scaled_b": "scaled_b"},
    )
    site = tmp_path / "site"
    matrix = tiny(tmp_path, '["scaled-a", "scaled-b"]', steps=2)
    out = tmp_path / "run"

    def run():
        qbench.plugins.reset()
        m = load_matrix(matrix, qbench.plugins.get_plugins().registry)
        summary = run_matrix(
            m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None
        )
        return summary, {j.quantizer.label: j.job_id for j in m.jobs}

    first, ids = run()
    assert first.ran == 2
    again, same = run()
    assert again.ran == 0 and same == ids  # nothing changed: nothing re-runs
    # the version stays 0.1.0; only the code of scaled_a changes (a longer file, so that
    # Python's bytecode cache, keyed by size and mtime, cannot serve the old code)
    source = (site / "scaled_a.py").read_text()
    (site / "scaled_a.py").write_text(source.replace("SCALE = 1.0", "SCALE = 0.999  # edited"))
    edited, new = run()
    assert new["scaled-b"] == ids["scaled-b"]
    assert new["scaled-a"] != ids["scaled-a"]
    assert edited.ran == 1 and edited.skipped == 1


def test_a_pair_follows_the_code_of_its_members(tmp_path, install_plugin):
    """``pair`` declares ``uses``: the code digests of the quantizers it names (by name or
    inline table, or its defaults) enter its job ids, so editing a member re-runs the
    pair's jobs and nothing else's."""
    site = install_plugin(
        "qbench-scaled",
        {"scaled_a": SCALED_NOISE.replace("{name}", "scaled-a")},
        {"scaled_a": "scaled_a"},
    )
    quantizers = (
        '[{ name = "pair", label = "p1", rate = "scaled-a", dist = "ste" }, '
        '{ name = "pair", label = "p2", rate = { name = "scaled-a" } }, '
        '{ name = "pair", label = "p3" }, "ste"]'
    )
    matrix = tiny(tmp_path, quantizers, steps=2)

    def ids():
        qbench.plugins.reset()
        m = load_matrix(matrix, qbench.plugins.get_plugins().registry)
        return {j.quantizer.label: j.job_id for j in m.jobs}

    before = ids()
    module = site / "scaled_a.py"
    module.write_text(module.read_text().replace("SCALE = 1.0", "SCALE = 0.5"))
    after = ids()
    assert before["p1"] != after["p1"] and before["p2"] != after["p2"]
    assert before["p3"] == after["p3"] and before["ste"] == after["ste"]  # noise, ste untouched
