"""Plugin discovery: third-party distributions, broken plugins, clashes, disabling."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import qbench
from qbench.plugins import load_plugins
from qbench.registry import PluginParameterError, UnknownNameError

from .conftest import make_distribution

GOOD = '''
import torch
import qbench

class HalfNoise(qbench.Quantizer):
    """y + U(-1/4, 1/4) during training."""
    def forward(self, y, means=None):
        if not self.training:
            return super().forward(y, means)
        y = y + torch.empty_like(y).uniform_(-0.25, 0.25)
        return qbench.Quantized(rate=y, dist=y)

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("halfnoise", HalfNoise, description="half-width uniform noise")
'''

CLASH = """
import qbench

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("noise", qbench.Quantizer, description="an impostor")
    register("clashfree", qbench.Quantizer, description="fine")
"""

BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

UNKNOWN_HOOK = """
import qbench

@qbench.hookimpl
def qbench_register_quantisers(register):
    pass
"""


@pytest.fixture
def third_party(tmp_path, on_path):
    root = tmp_path / "site"
    make_distribution(
        root,
        "qbench-halfnoise",
        {"halfnoise_plugin": GOOD},
        {"halfnoise": "halfnoise_plugin"},
        version="1.2.3",
    )
    make_distribution(root, "qbench-clash", {"clash_plugin": CLASH}, {"clash": "clash_plugin"})
    make_distribution(
        root,
        "qbench-broken",
        {"broken_plugin": BROKEN},
        {"broken": "broken_plugin"},
        version="0.0.1",
    )
    make_distribution(root, "qbench-typo", {"typo_plugin": UNKNOWN_HOOK}, {"typo": "typo_plugin"})
    on_path(root)
    return root


def test_third_party_quantizer_is_registered(third_party):
    ps = load_plugins()
    entry = ps.registry.get("quantizer", "halfnoise")
    assert (entry.plugin, entry.distribution, entry.version) == (
        "halfnoise",
        "qbench-halfnoise",
        "1.2.3",
    )
    q = entry.build()
    assert isinstance(q, qbench.Quantizer) and q.training


def test_broken_plugin_is_reported_and_others_load(third_party):
    ps = load_plugins()
    reasons = {p.plugin: p for p in ps.problems}
    assert "broken" in reasons
    assert "qbench-broken 0.0.1" in reasons["broken"].distribution
    assert "RuntimeError" in reasons["broken"].reason and "on purpose" in reasons["broken"].reason
    assert ("quantizer", "noise") in ps.registry and ("quantizer", "halfnoise") in ps.registry


def test_clash_first_registration_wins(third_party):
    ps = load_plugins()
    entry = ps.registry.get("quantizer", "noise")
    assert entry.distribution == "qbench-lic"
    clash = [p for p in ps.problems if p.plugin == "clash"]
    assert clash and "qbench-clash" in clash[0].reason and "qbench" in clash[0].reason
    assert ("quantizer", "clashfree") in ps.registry


def test_unknown_hook_name_is_rejected(third_party):
    ps = load_plugins()
    typo = [p for p in ps.problems if p.plugin == "typo"]
    assert typo and "qbench_register_quantisers" in typo[0].reason


def test_disable_plugins_env_and_argument(third_party, monkeypatch):
    monkeypatch.setenv("QBENCH_DISABLE_PLUGINS", "halfnoise,broken")
    ps = load_plugins()
    assert ("quantizer", "halfnoise") not in ps.registry
    assert not [p for p in ps.problems if p.plugin == "broken"]
    monkeypatch.delenv("QBENCH_DISABLE_PLUGINS")
    ps = load_plugins(disable=("sga",))
    assert ("quantizer", "sga") not in ps.registry and ("quantizer", "halfnoise") in ps.registry


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownNameError) as info:
        registry.get("quantizer", "nosie")
    msg = str(info.value)
    assert "quantizer" in msg and "'noise'" in msg


def test_wrong_factory_parameter_names_plugin_and_lists_accepted(registry):
    with pytest.raises(PluginParameterError) as info:
        registry.build("quantizer", "sua", zero_centre=True)
    msg = str(info.value)
    assert "'zero_centre'" in msg and "'sua'" in msg and "zero_center" in msg


def test_qbench_list_cli_shows_third_party_and_problems(third_party):
    env = {**os.environ, "PYTHONPATH": str(third_party)}
    out = subprocess.run(
        [sys.executable, "-m", "qbench.cli", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "halfnoise" in out.stdout and "qbench-halfnoise 1.2.3" in out.stdout
    assert "Plugin problems" in out.stdout and "qbench-broken" in out.stdout
    for name in (
        "round",
        "noise",
        "ste",
        "mixed",
        "sga",
        "sua",
        "bmshj2018-factorized",
        "bmshj2018-hyperprior",
        "mbt2018-mean",
        "folder",
        "kodak",
        "embedded",
        "psnr",
    ):
        assert name in out.stdout
