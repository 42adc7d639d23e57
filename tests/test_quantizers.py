"""Unit tests of the built-in quantizers' math."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import qbench


def make(registry, name, **params):
    return registry.build("quantizer", name, **params)


ALL = ["round", "noise", "ste", "mixed", "sga", "sua"]
#: the built-ins of plugins/field_surrogates.py (their own tests: test_field_surrogates.py)
FIELD = ["pair", "soft-round", "ds-q", "kumaraswamy", "soft-to-hard", "universal"]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("with_means", [False, True])
def test_eval_mode_is_hard_rounding_around_means(registry, name, with_means):
    torch.manual_seed(0)
    q = make(registry, name).eval()
    y = torch.randn(2, 4, 8, 8) * 3
    means = torch.randn_like(y) if with_means else None
    out = q(y, means)
    expected = torch.round(y - means) + means if with_means else torch.round(y)
    assert torch.equal(out.rate, expected) and torch.equal(out.dist, expected)
    assert torch.equal(q.quantize(y, means), expected)


def test_noise_offset_is_uniform(registry):
    torch.manual_seed(1234)
    q = make(registry, "noise").train()
    y = torch.randn(20000) * 5
    out = q(y)
    assert torch.equal(out.rate, out.dist)
    offset = (out.rate - y).numpy()
    _, p = stats.kstest(offset, stats.uniform(loc=-0.5, scale=1.0).cdf)
    assert p > 0.01
    # and clearly not uniform on a wrong interval
    assert stats.kstest(offset, stats.uniform(loc=-0.25, scale=0.5).cdf).pvalue < 1e-6


def test_ste_forward_rounds_backward_identity(registry):
    q = make(registry, "ste").train()
    y = (torch.randn(1000) * 4).requires_grad_()
    means = torch.randn(1000)
    out = q(y, means)
    assert torch.equal(out.dist.detach(), torch.round(y.detach() - means) + means)
    out.dist.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))


def test_mixed_noise_for_rate_ste_for_distortion(registry):
    torch.manual_seed(0)
    q = make(registry, "mixed").train()
    y = (torch.randn(5000) * 3).requires_grad_()
    means = torch.randn(5000)
    out = q(y, means)
    offset = (out.rate - y).detach().numpy()
    assert stats.kstest(offset, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 0.01
    assert torch.equal(out.dist.detach(), torch.round(y.detach() - means) + means)
    (out.dist.sum() + out.rate.sum()).backward()
    assert torch.allclose(y.grad, torch.full_like(y, 2.0))


def test_round_has_no_gradient(registry):
    q = make(registry, "round").train()
    y = torch.randn(100, requires_grad=True)
    out = q(y)
    assert torch.equal(out.dist, torch.round(y.detach()))
    out.dist.sum().backward()
    assert torch.equal(y.grad, torch.zeros_like(y))
    assert registry.get("quantizer", "round").metadata["differentiable"] is False


def test_sga_training_schedule_reaches_near_hard_rounding(registry):
    q = make(registry, "sga")
    for t in (0.0, 0.2, 0.35):
        q.set_progress(t)
        assert q.tau == pytest.approx(0.5)  # constant for the first t0_frac of training
    q.set_progress(0.35 + 0.65 / 2)  # half way through the decay: geometric mean
    assert q.tau == pytest.approx(np.sqrt(0.5 * 0.01))
    q.set_progress(1.0)
    assert q.tau == pytest.approx(0.01)
    taus = []
    for t in np.linspace(0, 1, 21):
        q.set_progress(float(t))
        taus.append(q.tau)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    # at the end of training a draw is within 0.01 of hard rounding on average
    torch.manual_seed(0)
    v = torch.rand(100000) * 8 - 4
    q.train()
    assert float((q(v).rate - torch.round(v)).abs().mean()) < 0.01


def test_sga_inference_schedule_is_the_references(registry):
    q = make(registry, "sga", schedule="inference")
    q.set_progress(0.0)
    assert q.tau == pytest.approx(0.5)  # clipped at tau_max before t0
    q.set_progress(0.35)
    assert q.tau == pytest.approx(0.5)
    q.set_progress(1.0)  # it = 2000, t0 = 700: 0.5 * exp(-1e-3 * 1300)
    assert q.tau == pytest.approx(0.5 * np.exp(-1.3))
    q2 = make(registry, "sga", schedule="inference", r=1.0)
    q2.set_progress(1.0)
    assert q2.tau == pytest.approx(1e-8)  # clipped at tau_min


def test_sga_rounds_y_itself_when_not_zero_centred(registry):
    torch.manual_seed(0)
    y = torch.rand(5000) * 6 - 3
    mu = torch.full_like(y, 0.4)
    for zero_center, grid in ((True, torch.round(y - mu) + mu), (False, torch.round(y))):
        q = make(registry, "sga", zero_center=zero_center).train()
        q.set_progress(1.0)
        assert float((q(y, mu).rate - grid).abs().mean()) < 0.01


def test_sga_cold_limit_is_rounding_and_gradients(registry):
    torch.manual_seed(0)
    q = make(registry, "sga").train()
    y = torch.rand(4000) * 10 - 5
    y = y[(y - y.round()).abs() < 0.45]  # away from the rounding midpoint
    cold = q.sample(y, tau=1e-4)
    assert torch.allclose(cold, torch.round(y), atol=1e-4)
    yg = (torch.rand(2000) * 6 - 3 + 0.3).requires_grad_()
    q.set_progress(0.0)
    out = q(yg)
    assert ((out.rate.detach() - yg.detach()).abs() <= 1.0).all()
    out.rate.sum().backward()
    assert torch.isfinite(yg.grad).all() and (yg.grad != 0).any()


def test_sua_ends_of_schedule(registry):
    torch.manual_seed(0)
    q = make(registry, "sua").train()
    y = torch.randn(20000) * 3
    q.set_progress(0.0)
    assert q.temperature == pytest.approx(1.0)
    offset = (q(y).rate - y).numpy()
    assert stats.kstest(offset, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 0.01
    q.set_progress(1.0)
    assert q.temperature == pytest.approx(0.0)
    assert torch.equal(q(y).rate, torch.round(y))


@pytest.mark.parametrize("schedule", ["exp", "linear", "cosine"])
def test_sua_schedule_is_monotone(registry, schedule):
    q = make(registry, "sua", schedule=schedule)
    temps = []
    for t in np.linspace(0, 1, 11):
        q.set_progress(float(t))
        temps.append(q.temperature)
    assert temps[0] == pytest.approx(1.0) and temps[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(temps, temps[1:]))
    q.set_progress(0.5)
    expected = {
        "linear": 0.5,
        "cosine": 0.5,
        "exp": (np.exp(-2.5) - np.exp(-5)) / (1 - np.exp(-5)),
    }[schedule]
    assert q.temperature == pytest.approx(expected)


def test_sua_partial_stop_gradient(registry):
    y = torch.tensor([0.3, 1.7, -2.2], requires_grad=True)
    mu = torch.tensor([0.1, 0.5, -1.0], requires_grad=True)
    q = make(registry, "sua").train()
    assert q.stop_gradient == "partial"
    q.set_progress(0.5)
    out = q(y, mu)
    out.dist.sum().backward()
    # y passes straight through; mu only through the added-back path (gradient 1)
    assert torch.equal(y.grad, torch.ones(3))
    assert torch.equal(mu.grad, torch.ones(3))
    # without the stop-gradient, mu also receives -1 through the quantizer's argument;
    # the old boolean and the name sua-none say the same
    for q2 in (
        make(registry, "sua", stop_gradient=False),
        make(registry, "sua", stop_gradient="none"),
        make(registry, "sua-none"),
    ):
        y.grad = mu.grad = None
        q2.train().set_progress(0.5)
        assert q2.stop_gradient == "none"
        q2(y, mu).dist.sum().backward()
        assert torch.equal(mu.grad, torch.zeros(3))
    assert make(registry, "sua", stop_gradient=True).stop_gradient == "partial"
    # zero_center off: the surrogate ignores mu in training (no gradient to mu)
    y.grad = mu.grad = None
    q3 = make(registry, "sua", zero_center=False).train()  # no centre: nothing to stop
    assert q3.stop_gradient == "none"
    q3.set_progress(1.0)
    out3 = q3(y, mu)
    assert torch.equal(out3.dist.detach(), torch.round(y.detach()))
    out3.dist.sum().backward()
    assert mu.grad is None


@pytest.mark.parametrize(
    "name",
    ["noise", "ste", "mixed", "sga", "sua", "stanh", *FIELD],
)
def test_bad_trick_options_are_refused(registry, name):
    from qbench.registry import PluginParameterError

    with pytest.raises(PluginParameterError, match="stop_gradient"):
        make(registry, name, stop_gradient="sometimes")
    with pytest.raises(PluginParameterError, match="zero_center = true"):
        make(registry, name, zero_center=False, stop_gradient="partial")
    with pytest.raises(PluginParameterError, match="scale_bound"):
        make(registry, name, scale_bound=0.0)


def test_sua_scale_bound_changes_backbone_likelihoods(registry):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    liks = {}
    for bound in (None, 2.0):
        torch.manual_seed(0)
        m = registry.build("backbone", "mbt2018-mean", N=16, M=16)
        m.set_quantizers({k: make(registry, "sua", scale_bound=bound) for k in m.latents})
        m.eval()
        liks[bound] = m(x)["likelihoods"]["y"]
    assert not torch.allclose(liks[None], liks[2.0])
    # a wider scale spreads the mass: the most likely symbols become less likely
    assert liks[2.0].max() < liks[None].max()


@pytest.mark.parametrize("name", [*ALL, *FIELD])
def test_progress_outside_unit_interval_is_refused_at_the_call_site(registry, name):
    m = registry.build("backbone", "bmshj2018-factorized", N=8, M=8)
    m.set_quantizers({k: make(registry, name) for k in m.latents})
    for t in (0.0, 0.5, 1.0):
        m.set_progress(t)
        assert m.quantizers["y"].progress == t
    for t in (-0.1, 1.5):
        with pytest.raises(ValueError, match="progress"):
            m.set_progress(t)
    assert m.quantizers["y"].progress == 1.0  # a refused value reaches no quantizer


def test_bins_default_uniform():
    q = qbench.Quantizer()
    lo, hi = q.bins(torch.tensor([1.0, -2.0]))
    assert torch.equal(lo, torch.tensor([0.5, -2.5])) and torch.equal(hi, torch.tensor([1.5, -1.5]))


@pytest.mark.parametrize(("progress", "equal_to"), [(1.0, "ste"), (0.0, "noise")])
def test_sua_at_the_ends_of_its_schedule_is_the_surrogate_it_names(registry, progress, equal_to):
    """SUA at T = 0 is STE, at T = 1 additive noise, each with SUA's routing and bound:
    the same values and gradients (to y and to the means), and ``reduces_to`` says so;
    halfway it is itself."""
    sua = registry.build("quantizer", "sua").train()
    other = registry.build(
        "quantizer", equal_to, zero_center=True, stop_gradient="partial", scale_bound=0.5
    ).train()
    sua.set_progress(progress)
    outs = []
    for q in (sua, other):
        y = (torch.arange(48.0).reshape(1, 3, 4, 4) / 7 - 3).requires_grad_()
        means = torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4).requires_grad_()
        torch.manual_seed(0)
        out = q(y, means)
        (out.rate.square().sum() + 2 * out.dist.sum()).backward()
        outs.append((out.rate.detach(), out.dist.detach(), y.grad, means.grad))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
    said = sua.reduces_to(progress)
    assert said.startswith(equal_to + " (") and "stop_gradient = partial" in said, said
    assert "scale bound 0.5" in said
    assert sua.reduces_to(0.5) == "" and other.reduces_to(progress) == ""
    assert sua.progress == progress  # reading it changed nothing
