"""STanH: the formula, its cells, annealing, real non-uniform bitstreams, variable rate."""

from __future__ import annotations

import csv

import pytest
import torch

import qbench.plugins
from qbench.evaluate import evaluate_image
from qbench.matrix import load_matrix
from qbench.runner import run_matrix


def stanh(registry, **kw):
    return registry.build("quantizer", "stanh", **kw)


def perturbed(registry, seed=0, **kw):
    q = stanh(registry, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q.w_param.add_(torch.randn(q.w_param.shape, generator=g) * 0.3)
        q.b.add_(torch.randn(q.b.shape, generator=g) * 0.15)
    return q


def test_formula_and_staircase_limit(registry):
    q = perturbed(registry, levels=11)
    x = torch.linspace(-7, 7, 2001)
    w, b = q.w.detach(), q.thresholds().detach()
    explicit = sum((w[i] / 2) * torch.tanh(3.0 * (x - b[i])) for i in range(10))
    torch.testing.assert_close(q.soft(x, 3.0).detach(), explicit)
    hard = q.quantize(x)
    away = (x[:, None] - b).abs().min(1).values > 0.05
    torch.testing.assert_close(q.soft(x, 1e4).detach()[away], hard[away])
    levels = q.levels().detach()
    assert torch.allclose(levels, torch.cumsum(torch.cat([torch.zeros(1), w]), 0) - w.sum() / 2)
    assert set(hard.unique().tolist()) <= set(levels.tolist())


def test_monotone(registry):
    q = perturbed(registry, levels=21)
    x = torch.linspace(-15, 15, 3001)
    assert (q.soft(x, 5.0).diff() >= 0).all()
    assert (q.quantize(x).diff() >= 0).all()
    assert (q.levels().diff() > 0).all()


def test_initialised_to_rounding(registry):
    q = stanh(registry, levels=61).eval()
    y = torch.randn(10000) * 10
    y = y[((y - y.floor()) - 0.5).abs() > 1e-4]
    assert torch.equal(q.quantize(y), torch.round(y).clamp(-30, 30))
    mu = torch.randn_like(y)
    assert torch.equal(q(y, mu).dist, torch.round(y - mu).clamp(-30, 30) + mu)
    assert sum(p.numel() for p in q.parameters()) == 120
    assert registry.get("quantizer", "stanh").metadata["parameters"] == 120


def test_gradients_wrt_w_and_b(registry):
    q = perturbed(registry, levels=11).train()
    y = torch.randn(500) * 3
    out = q(y)
    out.dist.pow(2).sum().backward()
    for p in (q.w_param, q.b):
        assert torch.isfinite(p.grad).all() and (p.grad != 0).any()


@pytest.mark.parametrize("cells", ["decision", "midpoint"])
def test_cells_partition_the_line(registry, cells):
    q = perturbed(registry, levels=21, cells=cells)
    lower, upper = (t.detach() for t in q.cell_bounds())
    assert torch.equal(lower[1:], upper[:-1]) and (upper > lower).all()
    # Gaussian masses of all cells sum to one
    from torch.distributions import Normal

    n = Normal(0.3, 2.0)
    assert float((n.cdf(upper) - n.cdf(lower)).sum()) == pytest.approx(1.0, abs=1e-5)
    y_hat = q.eval().quantize(torch.randn(1000) * 4)
    lo, hi = q.bins(y_hat)
    j = q.nearest_level(y_hat)
    assert torch.equal(lo, lower[j].detach()) and torch.equal(hi, upper[j].detach())


def test_decision_and_midpoint_cells_differ_once_levels_move(registry):
    q_dec = perturbed(registry, levels=21, cells="decision")
    q_mid = perturbed(registry, levels=21, cells="midpoint")
    assert not torch.allclose(q_dec.cell_bounds()[0], q_mid.cell_bounds()[0])
    fresh_dec = stanh(registry, levels=21, cells="decision").cell_bounds()
    fresh_mid = stanh(registry, levels=21, cells="midpoint").cell_bounds()
    torch.testing.assert_close(fresh_dec, fresh_mid)  # identical at the rounding init


def test_beta_annealing(registry):
    q = stanh(registry, levels=11).train()
    y = torch.randn(1000) * 3
    betas = [float(q.beta)]
    for _ in range(5):
        q(y)
        q.end_step()  # the training loop's call after each step
        betas.append(float(q.beta))
    assert all(b2 > b1 for b1, b2 in zip(betas, betas[1:]))
    for _ in range(3):
        q(y)  # a probe's forward pass, with or without gradients, anneals nothing
        with torch.no_grad():
            q(y)
    assert float(q.beta) == betas[-1]
    q(y)
    q.end_step()
    after = float(q.beta)
    q.end_step()  # one step's gap is applied once
    assert after > betas[-1] and float(q.beta) == after
    capped = stanh(registry, levels=11, beta=10.0, beta_max=10.5, gap_factor=1e3).train()
    capped(y)
    capped.end_step()
    assert float(capped.beta) == 10.5
    sched = stanh(registry, levels=11, annealing="schedule", beta=2.0, beta_max=200.0)
    sched.set_progress(0.5)
    assert float(sched.beta) == pytest.approx(20.0)


@pytest.mark.parametrize("backbone", ["bmshj2018-factorized", "mbt2018-mean"])
def test_nonuniform_levels_roundtrip_bitexact_on_real_images(registry, backbone):
    torch.manual_seed(0)
    m = registry.build("backbone", backbone, N=16, M=16)
    m.set_quantizers({k: perturbed(registry, levels=31, seed=i) for i, k in enumerate(m.latents)})
    assert not torch.allclose(m.quantizers["y"].levels().diff(), torch.ones(30))
    m.eval()
    m.update(force=True)
    images = registry.build("dataset", "embedded", split="eval")
    for i in range(len(images)):
        ev = evaluate_image(m, images[i], images.names[i])
        assert ev.bitexact
        bits = sum(float(-torch.log2(p).sum()) for p in ev.likelihoods.values())
        if backbone == "bmshj2018-factorized":  # per-channel tables: exact up to coder overhead
            assert 8 * ev.num_bytes == pytest.approx(bits, rel=0.03, abs=64)
        with torch.no_grad():  # the decoded image is the forward pass's reconstruction
            enc = m.compress(ev.x_padded)
            x_dec = m.decompress(enc["strings"], enc["shape"])["x_hat"]
            x_fwd = m(ev.x_padded)["x_hat"].clamp(0, 1)
        torch.testing.assert_close(x_dec, x_fwd, rtol=1e-4, atol=1e-4)


def test_variable_rate_protocol_end_to_end(tmp_path):
    matrix = tmp_path / "vr.toml"
    matrix.write_text("""
name = "vr"
[matrix]
backbones = [{ name = "bmshj2018-factorized", N = 16, M = 16 }]
quantizers = [{ name = "stanh", levels = 31 },
    { name = "stanh", levels = 31, label = "stanh-derived", from_anchor = 0.003, refine_steps = 4 },
    { name = "stanh", levels = 31, label = "stanh-interp", interpolate = { of = "stanh-derived", between = [0.001, 0.003], points = 3 } },
]
lambdas = [0.0003, 0.001, 0.003, 0.01]
datasets = [{ name = "embedded", split = "eval" }]
[train]
steps = 6
batch_size = 2
crop = 64
lr = 1e-2
log_every = 3
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
max_images = 1
[report]
anchor = "stanh"
""")
    qbench.plugins.reset()
    m = load_matrix(matrix, qbench.plugins.get_plugins().registry)
    out = tmp_path / "run"
    run_matrix(m, out, workers=2, device="cpu", show_progress=False, echo=lambda *_: None)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 + 4 + 3 and all(r["status"] == "ok" for r in rows), rows
    derived = {float(r["lambda"]): r for r in rows if r["quantizer"] == "stanh-derived"}
    interp = {float(r["interp_weight"]): r for r in rows if r["quantizer"] == "stanh-interp"}
    assert all(r["mode"] == "refine" and r["trained_parameters"] == "60" for r in derived.values())
    assert all(r["origin"] == "stanh@0.003" for r in derived.values())
    assert all(float(r["train_seconds"]) == 0 for r in interp.values())
    # the blend's ends are the derived models it blends
    assert interp[0.0]["bpp"] == derived[0.001]["bpp"]
    assert interp[1.0]["bpp"] == derived[0.003]["bpp"]
    # refinement froze the backbone: its weights are the anchor's
    anchor_id = next(
        j.train_id for j in m.jobs if j.quantizer.label == "stanh" and j.lmbda == 0.003
    )
    derived_id = next(
        j.train_id for j in m.jobs if j.quantizer.label == "stanh-derived" and j.lmbda == 0.0003
    )
    a = torch.load(out / "checkpoints" / f"{anchor_id}.pt", weights_only=True)
    d = torch.load(out / "checkpoints" / f"{derived_id}.pt", weights_only=True)
    for k in a:
        if k.startswith("net."):
            assert torch.equal(a[k], d[k]), k
    assert not torch.equal(a["quantizers.y.b"], d["quantizers.y.b"])
    from qbench.report import write_report

    write_report(out)
    report = (out / "report.md").read_text()
    assert "Variable rate" in report and "derived" in report and "interpolated" in report


def test_from_anchor_needs_an_anchor(tmp_path, registry):
    from qbench.matrix import MatrixError

    p = tmp_path / "bad.toml"
    p.write_text("""
[matrix]
backbones = [{ name = "bmshj2018-factorized", N = 16, M = 16 }]
quantizers = [{ name = "stanh", label = "d", from_anchor = 0.003 }]
lambdas = [0.001, 0.003]
datasets = ["embedded"]
""")
    with pytest.raises(MatrixError, match=r"matrix.quantizers\[0\].from_anchor"):
        load_matrix(p, registry)
