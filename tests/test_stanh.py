"""STanH: the formula, its cells, annealing, real non-uniform bitstreams, variable rate."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
import torch

import qbench.plugins
from qbench.plan.matrix import load_matrix
from qbench.report import load_results
from qbench.run.evaluate import evaluate_image
from qbench.run.runner import run_matrix


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
    run_matrix(m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None)
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
    # the rows say structurally which model a derived point starts from
    assert all(
        r["anchor"] == "stanh" and float(r["anchor_lambda"]) == 0.003 for r in derived.values()
    )
    assert all(r["anchor"] == "stanh-derived" and r["anchor_lambda"] == "" for r in interp.values())
    from qbench.report import variable_rate_rows

    notes: list[str] = []
    vr = variable_rate_rows(load_results(out), "stanh", notes)
    # ("all" only when some blend is a model of its own: tiny models may give equal points)
    assert {"derived", "interpolated"} <= {r["points"] for r in vr}
    assert all(r["method"] == "stanh-derived" and r["anchor_train_s"] > 0 for r in vr)
    # a run from before the structured anchors: said in the notes, no table, no crash
    old = pd.read_csv(out / "results.csv").drop(columns=["anchor", "anchor_lambda"])
    old.to_csv(out / "results.csv", index=False)
    rep = write_report(out, write=False)
    assert any("predates structured anchors" in n for n in rep.notes)
    assert not variable_rate_rows(load_results(out), "stanh", [])


def test_from_anchor_needs_an_anchor(tmp_path, registry):
    from qbench.plan.matrix import MatrixError

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


# -- preset = "authors": values from the authors' formulas (EIDOSLAB/StanH at c6a29b6) ---------


def authors_soft(x, w, b, beta):
    """``NonLinearStanh.forward``: f(x) = 2 sigmoid(2x) - 1 (tanh), b sorted, w as is."""
    b = torch.sort(b)[0]
    f = 2 * torch.sigmoid(2 * beta * (x[None, :] - b[:, None])) - 1
    return torch.sum((w[:, None] / 2) * f, dim=0)


def authors_hard(x, w, b):
    """``forward(x, -1)``: sum_i w_i relu(sign(x - b_i)) - w_i / 2."""
    b = torch.sort(b)[0]
    return torch.sum(
        w[:, None] * torch.relu(torch.sign(x[None, :] - b[:, None])) - w[:, None] / 2, 0
    )


def authors_levels(w):
    """``cum_w``: [0, cumsum(w)] - sum(w) / 2."""
    return torch.cat([torch.zeros(1), torch.cumsum(w, 0)]) - w.sum() / 2


def authors_cell(v, w):
    """``define_v0_and_v1``: the cell of v found by the level midpoints padded with -+1000,
    its half-gaps padded with 0 at both ends; the likelihood interval is [v - left, v + right]."""
    c = authors_levels(w)
    mids = torch.cat([torch.tensor([-1000.0]), (c[1:] + c[:-1]) / 2, torch.tensor([1000.0])])
    half = (c[1:] - c[:-1]) / 2
    left, right = torch.cat([torch.zeros(1), half]), torch.cat([half, torch.zeros(1)])
    j = torch.searchsorted(mids, v, right=True) - 1
    return v - left[j], v + right[j]


def random_authors(registry, levels=21, seed=0):
    q = stanh(registry, preset="authors", levels=levels)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        q.w_param.copy_(0.5 + torch.rand(levels - 1, generator=g))  # raw heights in [0.5, 1.5]
        q.b.add_(torch.randn(levels - 1, generator=g) * 0.2)
    return q


def test_authors_preset_defaults(registry):
    q = stanh(registry, preset="authors")
    assert (q.weights, q.annealing, q.gap_factor, q.gap_measure, q.cells) == (
        "raw",
        "gap_stoc",
        15.0,
        "mse",
        "bounded",
    )
    assert q.beta_max == float("inf") and float(q.beta) == 10.0 and not q.zero_center
    m = registry.build("backbone", "mbt2018-mean", N=8, M=8)
    m.set_quantizers({k: stanh(registry, preset="authors") for k in m.latents})
    assert m.quantizers["y"].b.numel() + 1 == 121 and m.quantizers["z"].b.numel() + 1 == 41
    # initialised to rounding on [-60, 60]: w = 1 (raw), b at the half-integers
    qy = m.quantizers["y"]
    torch.testing.assert_close(qy.levels().detach(), torch.arange(-60.0, 61.0))
    # an explicit level count wins over the per-latent default
    m.set_quantizers({k: stanh(registry, preset="authors", levels=31) for k in m.latents})
    assert m.quantizers["z"].b.numel() + 1 == 31
    # any parameter overrides its preset
    assert stanh(registry, preset="authors", cells="decision").cells == "decision"


def test_authors_soft_hard_levels_and_cells_match_their_formulas(registry):
    for seed in range(3):
        q = random_authors(registry, seed=seed)
        w, b = q.w_param.detach(), q.b.detach()
        x = torch.randn(4000, generator=torch.Generator().manual_seed(seed)) * 8
        for beta in (2.0, 10.0, 57.0):
            torch.testing.assert_close(q.soft(x, beta).detach(), authors_soft(x, w, b, beta))
        torch.testing.assert_close(q.quantize(x), authors_hard(x, w, b))
        torch.testing.assert_close(q.levels().detach(), authors_levels(w))
        # cells of hard levels and of soft (training) values, outer cells included
        for v in (q.quantize(x), q.soft(x, 10.0).detach()):
            lo, hi = q.bins(v)
            ref_lo, ref_hi = authors_cell(v, w)
            torch.testing.assert_close((lo.detach(), hi.detach()), (ref_lo, ref_hi))
    c = q.levels().detach()
    lo, hi = (t.detach() for t in q.bins(c[[0, -1]]))
    assert float(lo[0]) == float(c[0]) and float(hi[1]) == float(c[-1])  # no tail mass


def test_authors_training_value_ignores_the_mean_and_test_uses_it(registry):
    q = random_authors(registry).train()
    y = torch.randn(500) * 4
    mu = torch.randn(500)
    out = q(y, mu)
    torch.testing.assert_close(out.rate, q.soft(y))  # trained on y, as their training path
    q.eval()
    torch.testing.assert_close(q(y, mu).dist, authors_hard(y - mu, q.w.detach(), q.b.detach()) + mu)


def test_authors_gap_stoc_annealing(registry):
    q = random_authors(registry).train()
    y = torch.randn(2000) * 4
    ceiling = 10.0
    torch.manual_seed(3)
    for _ in range(4):
        s = q(y).rate.detach()
        hard = authors_hard(y, q.w.detach(), q.b.detach())
        gap = abs(float(((y - s) ** 2).mean()) - float(((y - hard) ** 2).mean()))
        ceiling += 15.0 * gap
        q.end_step()
        assert float(q.beta_ceiling) == pytest.approx(ceiling, rel=1e-5)
        assert 1.0 <= float(q.beta) <= ceiling
    # the draw comes from the training RNG stream: the same seed gives the same beta
    q2 = random_authors(registry).train()
    torch.manual_seed(3)
    for _ in range(4):
        q2(y)
        q2.end_step()
    assert float(q2.beta) == float(q.beta)


def test_authors_interpolation_is_linear_in_raw_w_and_b(registry):
    q1, q2 = random_authors(registry, seed=1), random_authors(registry, seed=2)
    w1, b1 = q1.w_param.detach().clone(), q1.thresholds().detach().clone()
    w2, b2 = q2.w_param.detach().clone(), q2.thresholds().detach().clone()
    q1.interpolate(q2, 0.3)
    torch.testing.assert_close(q1.w_param.detach(), 0.7 * w1 + 0.3 * w2)
    torch.testing.assert_close(q1.thresholds().detach(), 0.7 * b1 + 0.3 * b2)
    x = torch.randn(1000) * 6
    torch.testing.assert_close(
        q1.quantize(x), authors_hard(x, 0.7 * w1 + 0.3 * w2, 0.7 * b1 + 0.3 * b2)
    )


def test_authors_preset_codes_bitexact(registry):
    torch.manual_seed(0)
    m = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    m.set_quantizers({k: stanh(registry, preset="authors") for k in m.latents})
    with torch.no_grad():
        for q in m.quantizers.values():
            q.w_param.mul_(1 + 0.2 * torch.rand_like(q.w_param))
    m.eval()
    m.update(force=True)
    images = registry.build("dataset", "embedded", split="eval")
    for i in range(len(images)):
        assert evaluate_image(m, images[i], images.names[i]).bitexact
