"""Mismatch and gradient statistics: closed-form toy cases and a real model."""

from __future__ import annotations

import pytest
import torch

from qbench.analysis import gradient_statistics, mismatch, model_gradient_statistics


def toy_losses(registry, name, theta, n=200_000):
    """y = theta * x, x ~ U(0, 1) (a midpoint grid); loss = mean(q(y)^2); hard: round(y)."""
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    q = registry.build("quantizer", name).train()

    def surrogate():
        return (q(theta * x).dist ** 2).mean()

    def hard():
        return (torch.round(theta * x) ** 2).mean()

    return surrogate, hard


def test_toy_gradients_match_closed_form(registry):
    """At theta = 1: true d/dtheta E[round(theta x)^2] = 0.5 / theta^2 = 0.5,
    noise gives E[2 (theta x + u) x] = 2 theta / 3, STE gives 1 - 0.25 / theta^2 = 0.75,
    so theory orders the biases |noise - true| = 1/6 < |ste - true| = 1/4."""
    torch.manual_seed(0)
    results = {}
    for name, expected in (("noise", 2 / 3), ("ste", 0.75)):
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        surrogate, hard = toy_losses(registry, name, theta)
        stats = gradient_statistics(surrogate, hard, [theta], draws=16, directions=2, step=0.05)
        g = float(torch.autograd.grad(surrogate(), theta)[0])
        assert g == pytest.approx(expected, rel=0.02)
        # the relative bias against the finite-difference reference of the hard loss
        assert stats["grad_bias"] == pytest.approx(abs(expected - 0.5) / 0.5, rel=0.03)
        results[name] = stats
    assert results["noise"]["grad_bias"] < results["ste"]["grad_bias"]
    assert results["ste"]["grad_var"] == pytest.approx(0.0, abs=1e-20)  # deterministic
    assert results["noise"]["grad_var"] > 0


def test_finite_difference_reference_recovers_true_gradient(registry):
    from qbench.analysis import finite_difference

    for theta0 in (0.8, 1.0, 1.3):
        theta = torch.tensor(theta0, dtype=torch.float64)
        _, hard = toy_losses(registry, "noise", theta)
        fd = finite_difference(hard, [theta], torch.ones(1, dtype=torch.float64), 0.02)
        assert fd == pytest.approx(0.5 / theta0**2, rel=0.03)


def model_with(registry, name):
    torch.manual_seed(0)
    m = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    m.set_quantizers({k: registry.build("quantizer", name) for k in m.latents})
    return m


@pytest.mark.parametrize("name", ["round", "ste"])
def test_hard_surrogates_have_no_mismatch(registry, name):
    m = model_with(registry, name)
    x = torch.rand(1, 3, 64, 64)
    mm = mismatch(m, x, draws=2)
    assert mm["mismatch_latent"] == 0.0 and mm["mismatch_dist"] == 0.0
    assert mm["mismatch_rate"] == pytest.approx(0.0, abs=1e-6)


def test_noise_latent_mismatch_is_at_least_the_noise_variance(registry):
    torch.manual_seed(0)
    m = model_with(registry, "noise")
    mm = mismatch(m, torch.rand(2, 3, 64, 64), draws=4)
    assert mm["mismatch_latent"] > 1 / 12 * 0.9
    assert mm["mismatch_rate"] != 0


def test_model_gradient_statistics(registry):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    ste = model_gradient_statistics(model_with(registry, "ste"), x, 0.01, draws=3, directions=2)
    noise = model_gradient_statistics(model_with(registry, "noise"), x, 0.01, draws=3, directions=2)
    assert ste["grad_var"] == pytest.approx(0.0, abs=1e-12)
    assert noise["grad_var"] > 0
    for s in (ste, noise):
        assert s["grad_bias"] >= 0 and s["grad_bias"] == s["grad_bias"]
