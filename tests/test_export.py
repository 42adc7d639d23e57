"""qbench export: one job's weights as a file that a backbone's checkpoint loads."""

from __future__ import annotations

import pytest
import torch

from qbench.cli import main
from qbench.plan.matrix import load_matrix
from qbench.run.runner import run_matrix

from .test_runner import tiny


def test_export_then_fine_tune_from_it(tmp_path, registry, capsys):
    p = tiny(tmp_path, '["noise"]', steps=2)
    p.write_text(p.read_text().replace("bmshj2018-factorized", "mbt2018-mean"))
    out = tmp_path / "run"
    run_matrix(
        load_matrix(p, registry), out, workers=0, device="cpu", show_progress=False, echo=print
    )
    init = tmp_path / "init.pt"
    assert (
        main(
            [
                "export",
                str(out),
                "--quantizer",
                "noise",
                "--lambda",
                "0.01",
                "--half",
                "--out",
                str(init),
            ]
        )
        == 0
    )
    state = torch.load(init, weights_only=True)
    # the large weights (16 x 16 x 5 x 5) are float16, the small tensors exact: CompressAI's likelihood bound of
    # 1e-9 is 0 in float16, and a zero bound gave infinite bpp (the bug this reproduces)
    assert state["net.g_a.2.weight"].dtype == torch.float16
    bound = state["net.gaussian_conditional.likelihood_lower_bound.bound"]
    assert bound.dtype == torch.float32 and float(bound) == pytest.approx(1e-9)
    m = registry.build("backbone", "mbt2018-mean", N=16, M=16, checkpoint=str(init))
    assert m.net.g_a[2].weight.dtype == torch.float32
    assert torch.equal(m.net.g_a[2].weight, state["net.g_a.2.weight"].float())
    # a missing job names what the run holds
    assert (
        main(["export", str(out), "--quantizer", "ste", "--lambda", "0.01", "--out", str(init)])
        == 2
    )
    assert "noise@0.01" in capsys.readouterr().err


def test_export_names_the_backbone_when_the_run_trained_several(tmp_path, registry, capsys):
    # the bug this reproduces: with two backbones trained with the same quantizer,
    # lambda and seed, `qbench export` wrote whichever job came first, silently
    p = tiny(tmp_path, '["noise"]', steps=1)
    p.write_text(
        p.read_text().replace(
            '[{ name = "bmshj2018-factorized", N = 16, M = 16 }]',
            '[{ name = "bmshj2018-factorized", N = 16, M = 16 }, '
            '{ name = "mbt2018-mean", N = 16, M = 16 }]',
        )
    )
    out = tmp_path / "run"
    run_matrix(
        load_matrix(p, registry), out, workers=0, device="cpu", show_progress=False, echo=print
    )
    init = tmp_path / "init.pt"
    args = ["export", str(out), "--quantizer", "noise", "--lambda", "0.01", "--out", str(init)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bmshj2018-factorized" in err and "mbt2018-mean" in err and "--backbone" in err
    assert not init.exists()
    for label, key in [
        ("mbt2018-mean", "net.gaussian_conditional.scale_table"),
        ("bmshj2018-factorized", "net.g_a.0.weight"),
    ]:
        assert main([*args, "--backbone", label]) == 0
        state = torch.load(init, weights_only=True)
        assert key in state
        assert ("net.h_a.0.weight" in state) == (label == "mbt2018-mean")
        registry.build("backbone", label, N=16, M=16, checkpoint=str(init))
