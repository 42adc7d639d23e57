"""The conformance suite catches broken quantizers, names the rule, and runs plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_distribution, pip_install_target, pythonpath_with, run_command

BROKEN = '''
import torch
import qbench

class Detached(qbench.Quantizer):
    """Training output detached from y."""
    def forward(self, y, means=None):
        if not self.training:
            return super().forward(y, means)
        y = (y + torch.empty_like(y).uniform_(-0.5, 0.5)).detach()
        return qbench.Quantized(rate=y, dist=y)

class Unrounded(qbench.Quantizer):
    """Returns y unrounded in eval mode."""
    def forward(self, y, means=None):
        return qbench.Quantized(rate=y, dist=y)

class BadBins(qbench.Quantizer):
    """Bins shifted off their values."""
    def bins(self, y_hat, means=None):
        return y_hat + 0.6, y_hat + 1.6

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("detached", Detached)
    register("unrounded", Unrounded)
    register("badbins", BadBins)
'''

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "qbench-example-quantizer"


@pytest.fixture
def broken_site(tmp_path):
    root = make_distribution(
        tmp_path / "site",
        "qbench-broken-quantizers",
        {"broken_quantizers": BROKEN},
        {"brokenq": "broken_quantizers"},
    )
    make_distribution(
        root,
        "qbench-unimportable",
        {"unimportable": "import no_such_module\n"},
        {"unimportable": "unimportable"},
    )
    return root


def run_conformance(pytester, site, *args):
    pytester.makeini("[pytest]\naddopts =\n")
    pytester._monkeypatch.setenv("PYTHONPATH", pythonpath_with(site))
    return pytester.runpytest_subprocess(
        "--qbench-conformance", "-p", "no:cacheprovider", "-p", "no:randomly", *args
    )


@pytest.mark.parametrize(
    "name,rule",
    [
        ("detached", "train_gradients"),
        ("unrounded", "eval_is_hard"),
        ("badbins", "bins_contain_values"),
    ],
)
def test_broken_quantizer_fails_the_rule(pytester, broken_site, name, rule):
    result = run_conformance(pytester, broken_site, "--qbench-quantizer", name)
    out = result.stdout.str()
    assert f"FAILED ::conformance[{name}-{rule}]" in out, out
    assert f"rule {rule!r} broken" in out
    assert "qbench-broken-quantizers" in out  # the failure names the distribution
    assert result.ret == 1


def test_unimportable_plugin_is_one_failing_item(pytester, broken_site):
    result = run_conformance(
        pytester, broken_site, "--qbench-quantizer", "noise", "--qbench-quantizer", "detached"
    )
    # named quantizers are checked alone; the other plugin's failure is a warning
    out = result.stdout.str()
    assert "plugin_loads" not in out
    assert "qbench conformance warning: plugin 'unimportable'" in out
    assert "No module named 'no_such_module'" in out
    result.assert_outcomes(failed=1, passed=21, skipped=2)  # detached fails train_gradients

    result = run_conformance(pytester, broken_site, "-k", "plugin_loads or noise")
    out = result.stdout.str()
    assert "FAILED ::conformance[unimportable-plugin_loads]" in out
    assert "No module named 'no_such_module'" in out


LENIENT = """
import qbench
from qbench.quantizer import uniform_noise


class Lenient(qbench.Quantizer):
    \"\"\"Noise; set_progress written to DESIGN.md, with no range check of its own.\"\"\"

    def set_progress(self, t):
        self.progress = t

    def forward(self, y, means=None):
        if not self.training:
            return super().forward(y, means)
        y = uniform_noise(y)
        return qbench.Quantized(rate=y, dist=y)


@qbench.hookimpl
def qbench_register_quantizers(register):
    register("lenient", Lenient)
"""


def test_set_progress_without_range_checks_passes(pytester, tmp_path):
    site = make_distribution(
        tmp_path / "site", "qbench-lenient", {"lenient": LENIENT}, {"lenient": "lenient"}
    )
    result = run_conformance(pytester, site, "--qbench-quantizer", "lenient")
    result.assert_outcomes(passed=11, skipped=1)


def test_unknown_quantizer_option(pytester, broken_site):
    result = run_conformance(pytester, broken_site, "--qbench-quantizer", "nosie")
    assert "'noise'" in result.stderr.str() + result.stdout.str()
    assert result.ret != 0


def test_conformance_is_inert_without_option(pytester):
    pytester.makeini("[pytest]\naddopts =\n")
    pytester.makepyfile("def test_one():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.fixture(scope="module")
def example_installed(tmp_path_factory):
    """pip-install the example plugin (a real wheel build) into a private target folder."""
    return pip_install_target(EXAMPLE, tmp_path_factory.mktemp("example-site"))


def _env(target):
    return {
        **os.environ,
        "PYTHONPATH": pythonpath_with(target),
    }


@pytest.mark.slow
def test_example_plugin_passes_conformance_and_runs(example_installed, tmp_path):
    env = _env(example_installed)
    listing = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "softround" in listing.stdout and "qbench-example-quantizer 0.1.0" in listing.stdout
    conf = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--qbench-conformance",
            "--qbench-quantizer",
            "softround",
            "-p",
            "no:cacheprovider",
            "-q",
            "-o",
            "addopts=",
            str(EXAMPLE / "tests"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert conf.returncode == 0, conf.stdout + conf.stderr
    assert "13 passed, 1 skipped" in conf.stdout, conf.stdout  # 2 own tests + 12 rules
    matrix = tmp_path / "m.toml"
    matrix.write_text(
        (EXAMPLE / "matrix.toml")
        .read_text()
        .replace("steps = 1000", "steps = 3")
        .replace("lambdas    = [0.0003, 0.001, 0.003, 0.01]", "lambdas = [0.01]")
        + '\n[eval]\nmetrics = ["bpp", "bpp_bitstream", "psnr"]\nmax_images = 1\n'
    )
    run = subprocess.run(
        run_command(matrix, tmp_path / "run", "--workers", "0"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "softround" in (tmp_path / "run" / "results.csv").read_text()


NONDIFF = """
import qbench


class Rounding(qbench.Quantizer):
    \"\"\"Hard rounding in training too: no gradient, as declared.\"\"\"


@qbench.hookimpl
def qbench_register_quantizers(register):
    register("rounding", Rounding, differentiable=False)
"""


def test_non_differentiable_quantizer_gradient_check_is_skipped(pytester, tmp_path):
    site = make_distribution(
        tmp_path / "site", "qbench-rounding", {"rounding": NONDIFF}, {"rounding": "rounding"}
    )
    result = run_conformance(
        pytester, site, "--qbench-quantizer", "rounding", "-k", "train_gradients", "-rs", "-v"
    )
    out = result.stdout.str()
    assert "conformance[rounding-train_gradients] SKIPPED" in out, out
    assert "declared non-differentiable (registered with differentiable=False)" in out, out
    result.assert_outcomes(skipped=1)


BAD_AGGREGATION = """
import qbench


class Hits(qbench.Metric):
    \"\"\"Whether each image was decoded, reduced with a reduction qbench does not have.\"\"\"

    columns = ("hits",)
    aggregate = {"hits": "max"}

    def per_image(self, ev):
        return {"hits": 1.0}


@qbench.hookimpl
def qbench_register_metrics(register):
    register("hits", Hits)
"""


def test_metric_with_unknown_aggregation_fails(pytester, tmp_path):
    site = make_distribution(
        tmp_path / "site", "qbench-hits", {"hits": BAD_AGGREGATION}, {"hits": "hits"}
    )
    result = run_conformance(
        pytester, site, "--qbench-metric", "hits", "-k", "declares_aggregations"
    )
    out = result.stdout.str()
    assert "FAILED ::conformance[metric:hits-declares_aggregations]" in out, out
    assert "column 'hits' declares aggregation 'max'; allowed: 'mean', 'all'" in out, out
    result.assert_outcomes(failed=1)


STRAY_LOGGER = """
from pathlib import Path

import qbench


class Stray(qbench.Logger):
    \"\"\"Logs into its folder, and leaves a file in the working directory too.\"\"\"

    def start(self, job, folder):
        self.file = Path(folder) / f"{job.quantizer.label}.log"
        self.file.write_text("")

    def log(self, step, stats):
        with self.file.open("a") as f:
            f.write(f"{step} {stats['loss']}\\n")

    def finish(self, row):
        Path("stray.txt").write_text(row["status"])


@qbench.hookimpl
def qbench_register_loggers(register):
    register("stray", Stray)
"""


def test_logger_rules_and_one_writing_outside_its_folder(pytester, tmp_path):
    site = make_distribution(
        tmp_path / "site", "qbench-stray", {"stray": STRAY_LOGGER}, {"stray": "stray"}
    )
    result = run_conformance(pytester, site, "--qbench-logger", "stray")
    out = result.stdout.str()
    assert "FAILED ::conformance[logger:stray-writes_inside_folder]" in out, out
    assert "wrote outside its folder run/monitor/stray: ['cwd/stray.txt']" in out, out
    result.assert_outcomes(failed=1, passed=2)  # constructs, start_log_finish


PROBLEMS = {
    "hookraises": """
import qbench

@qbench.hookimpl
def qbench_register_quantizers(register):
    raise RuntimeError("on purpose")
""",
    "hooktypo": """
import qbench

@qbench.hookimpl
def qbench_register_quantisers(register):
    pass
""",
    "badregister": """
import qbench

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("", qbench.Quantizer)
""",
    "takenname": """
import qbench

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("noise", qbench.Quantizer)
""",
    "unimportable": "import no_such_module\n",
}
PROBLEM_KINDS = {
    "hookraises": "hook",
    "hooktypo": "hook",
    "badregister": "register",
    "takenname": "duplicate",
    "unimportable": "import",
}


def test_plugin_problems_have_a_kind(install_plugin):
    from qbench.plugins import load_plugins

    install_plugin("qbench-problems", PROBLEMS, {name: name for name in PROBLEMS})
    kinds = {p.plugin: p.kind for p in load_plugins().problems}
    assert kinds == PROBLEM_KINDS


@pytest.mark.slow
def test_each_plugin_problem_is_a_failing_item_named_by_its_kind(pytester, tmp_path):
    site = make_distribution(
        tmp_path / "site", "qbench-problems", PROBLEMS, {name: name for name in PROBLEMS}
    )
    rules = "plugin_loads or hooks_run or register_calls or unique_names"
    result = run_conformance(pytester, site, "-k", rules)
    out = result.stdout.str()
    for item in (
        "hookraises-hooks_run",
        "hooktypo-hooks_run",
        "badregister-register_calls",
        "takenname-unique_names",
        "unimportable-plugin_loads",
    ):
        assert f"FAILED ::conformance[{item}]" in out, out
    assert "plugin 'takenname' (qbench-problems) registered a name that was taken" in out
    result.assert_outcomes(failed=5)
