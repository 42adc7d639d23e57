"""qbench list: the catalogue of installed names, cached per plugin set, 100 columns wide."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from qbench.catalogue import WIDTH, from_plugins, installed, key, render

from .conftest import make_distribution, pythonpath_with

HALF = '''
import qbench

class Half(qbench.Quantizer):
    """{doc}"""

@qbench.hookimpl
def qbench_register_quantizers(register):
    register("half", Half, description="{doc}")
'''

# `qbench list` in a fresh interpreter; prints which heavy modules it imported
LIST = (
    "import sys, io, contextlib\n"
    "from qbench.cli import main\n"
    "out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out):\n"
    "    rc = main(['list'] + sys.argv[1:])\n"
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'compressai'})\n"
    "print(rc, ','.join(heavy) or '-')\n"
    "print(out.getvalue())\n"
)


def _list(env, *args):
    done = subprocess.run(
        [sys.executable, "-c", LIST, *args], env=env, capture_output=True, text=True, check=True
    )
    status, _, listing = done.stdout.partition("\n")
    return status, listing


def test_listing_fits_100_columns_and_names_everything(plugins):
    catalogue = from_plugins(plugins)
    short = render(catalogue)
    assert max(len(line) for line in short.splitlines()) <= WIDTH
    for entry in catalogue.entries:  # nothing is cut: every description word is there
        assert entry.name in short
        assert entry.description.split()[-1] in short
    long = render(catalogue, long=True)
    assert max(len(line) for line in long.splitlines()) <= WIDTH
    stanh = next(e for e in catalogue.entries if e.name == "stanh")
    assert stanh.code in long and "parameters:" in long


@pytest.mark.slow
def test_second_listing_imports_no_plugin_and_an_edit_is_seen(tmp_path):
    site = make_distribution(
        tmp_path / "site",
        "qbench-half",
        {"half_q": HALF.replace("{doc}", "first words")},
        {"half": "half_q"},
    )
    env = {
        **os.environ,
        "PYTHONPATH": pythonpath_with(site),
        "QBENCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    first, listing = _list(env)
    assert first == "0 compressai,torch" and "first words" in listing  # loaded once
    second, again = _list(env)
    assert second == "0 -" and again == listing  # from the cache: no torch, same listing
    (site / "half_q.py").write_text(HALF.replace("{doc}", "second words, edited"))
    third, edited = _list(env)
    assert third == "0 compressai,torch" and "second words, edited" in edited
    status, as_json = _list(env, "--json")
    assert status == "0 -"
    names = {e["name"]: e for e in json.loads(as_json)["entries"]}
    assert names["half"]["distribution"] == "qbench-half"
    # disabling a plugin is another plugin set
    _, without = _list({**env, "QBENCH_DISABLE_PLUGINS": "half"})
    assert not re.search(r"^  half ", without, re.M) and re.search(r"^  half ", edited, re.M)


def test_a_broken_plugin_is_never_cached(tmp_path, monkeypatch, on_path):
    site = make_distribution(
        tmp_path / "site",
        "qbench-broken",
        {"broken_q": "raise ImportError('no foo')"},
        {"broken": "broken_q"},
    )
    on_path(site)
    monkeypatch.setenv("QBENCH_CACHE_DIR", str(tmp_path / "cache"))
    import qbench.plugins

    qbench.plugins.reset()
    try:
        catalogue = installed()
        assert catalogue.problems and "no foo" in catalogue.problems[0]["reason"]
        assert not (tmp_path / "cache" / "catalogue" / f"{key()}.json").exists()
        assert "Plugin problems:" in render(catalogue)
    finally:
        qbench.plugins.reset()
