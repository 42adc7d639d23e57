"""Mismatch and gradient statistics: closed-form toys, estimator properties, a real model."""

from __future__ import annotations

import math

import pytest
import torch

from qbench.analysis import (
    Estimate,
    gradient_statistics,
    jackknife,
    mismatch,
    model_gradient_statistics,
    ratio_of_sums,
    t_quantile,
)


def toy_losses(registry, name, theta, n=200_000, batches=8):
    """y = theta * x, x ~ U(0, 1) (a midpoint grid, dealt to ``batches`` interleaved batches);
    loss = mean(q(y)^2); hard: mean(round(y)^2), piecewise constant in theta with n steps."""
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    q = registry.build("quantizer", name).train()
    surrogate, hard = [], []
    for b in range(batches):
        xb = x[b::batches]
        surrogate.append(lambda xb=xb: (q(theta * xb).dist ** 2).mean())
        hard.append(lambda xb=xb: (torch.round(theta * xb) ** 2).mean())
    return surrogate, hard


def test_toy_gradients_match_closed_form(registry):
    """At theta = 1 the derivative of E[round(theta x)^2] is 0.5; noise's mean gradient is
    E[2 (theta x + u) x] = 2/3 and STE's 1 - 0.25 = 3/4. Along the mean direction
    grad_slope_ratio = 0.5 / g: 3/4 for noise, 2/3 for STE (biases 1/4 and 1/3), and the
    intervals separate them."""
    torch.manual_seed(0)
    results = {}
    for name, g_true in (("noise", 2 / 3), ("ste", 0.75)):
        theta = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        surrogate, hard = toy_losses(registry, name, theta)
        stats = gradient_statistics(surrogate, hard, [theta], draws=8, step=0.02)
        ratio = stats["grad_slope_ratio"]
        assert ratio.value == pytest.approx(0.5 / g_true, abs=0.01)
        assert ratio.low <= 0.5 / g_true <= ratio.high
        assert ratio.half_width < 0.25 * ratio.value
        assert ratio.flag == ""  # a plateau over h/2 .. 2h
        results[name] = stats
    assert results["ste"]["grad_slope_ratio"].high < results["noise"]["grad_slope_ratio"].low
    assert results["ste"]["grad_var"] == Estimate.zero("deterministic surrogate")
    # noise: Var(mean_i 2 u_i x_i) / (2/3)^2 = (4 / 36 / n_b) / (4 / 9) = 1 / (4 n_b)
    expected = 1 / (4 * 200_000 / 8)
    var = results["noise"]["grad_var"]
    assert var.exact == "" and var.low <= expected <= var.high
    assert var.value == pytest.approx(expected, rel=0.5)  # 56 degrees of freedom


def test_normalised_variance_resolves_what_the_naive_one_saturates():
    """g = mu + eps with tr(Sigma) / ||mu||^2 = 100: the naive mean ||g_k - g||^2 / ||g||^2
    of K = 8 draws cannot exceed K - 1 = 7; qbench's estimate finds 100."""
    dim, draws = 2000, 8
    mu = torch.full((dim,), 0.1, dtype=torch.float64)  # ||mu||^2 = 20, tr(Sigma) = 2000
    theta = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    gen = torch.Generator().manual_seed(0)

    def loss():
        return theta @ (mu + torch.randn(dim, generator=gen, dtype=torch.float64))

    truth = dim / float(mu @ mu)
    assert truth == pytest.approx(100)
    grads = torch.stack([torch.autograd.grad(loss(), theta)[0] for _ in range(draws)])
    naive = float((grads - grads.mean(0)).pow(2).sum(1).mean() / grads.mean(0).pow(2).sum())
    assert naive < draws - 1
    stats = gradient_statistics([loss] * 16, [lambda: theta.sum()] * 16, [theta], draws=draws)
    var = stats["grad_var"]
    assert var.low <= truth <= var.high
    assert var.value == pytest.approx(truth, rel=0.3)


def test_jackknife_ratio_interval_covers_and_shrinks():
    gen = torch.Generator().manual_seed(1)
    widths = []
    for n in (10, 160):
        den = 1 + torch.rand(n, generator=gen, dtype=torch.float64)
        num = 0.5 * den + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)
        e = jackknife(ratio_of_sums(num, den), n)
        assert e.low < 0.5 < e.high
        widths.append(e.half_width)
    assert widths[1] < widths[0] / 2.5  # about 1/sqrt(16)
    with pytest.raises(ValueError, match="at least 2"):
        jackknife(ratio_of_sums(num[:1], den[:1]), 1)


def test_jackknife_bias_correction_removes_a_ratios_small_sample_bias():
    """A ratio of sums over n = 6 units with a noisy denominator (num ~ U(0, 2), den ~
    U(0.2, 1.8), population ratio 1): over 3000 sets the plug-in's mean is 1.037 (+3.7 %,
    standard error 0.6 %), the bias-corrected value's 0.991; the correction leaves under a
    third of the bias."""
    gen = torch.Generator().manual_seed(2)
    n, sets = 6, 3000
    plain, corrected = [], []
    for _ in range(sets):
        num = 2 * torch.rand(n, generator=gen, dtype=torch.float64)
        den = 0.2 + 1.6 * torch.rand(n, generator=gen, dtype=torch.float64)
        stat = ratio_of_sums(num, den)
        plain.append(stat(torch.ones(n, dtype=torch.bool)))
        e = jackknife(stat, n, correct_bias=True)
        assert e.low < e.value < e.high
        corrected.append(e.value)
    plain_t, corrected_t = torch.tensor(plain), torch.tensor(corrected)
    se = float(plain_t.std()) / sets**0.5
    assert float(plain_t.mean()) - 1 > 4 * se  # the bias is there, and resolved
    assert abs(float(corrected_t.mean()) - 1) < (float(plain_t.mean()) - 1) / 3


def test_delete_a_group_jackknife_leaves_out_contiguous_groups():
    """groups = 4 over 12 units: 4 replicates, each without 3 consecutive units; standard
    error sqrt((G - 1) / G * sum (stat_(g) - mean)^2) and Student t with G - 1 = 3
    degrees of freedom."""
    x = torch.tensor([0.3, 1.2, -0.4, 2.0, 0.8, 0.1, 1.7, -1.1, 0.5, 0.9, 1.4, -0.2])
    seen = []

    def mean(keep):
        seen.append(keep.clone())
        return float(x[keep].mean())

    e = jackknife(mean, 12, groups=4)
    assert len(seen) == 5 and bool(seen[0].all())
    for g, keep in enumerate(seen[1:]):
        assert keep.tolist() == [not (3 * g <= i < 3 * g + 3) for i in range(12)]
    loo = [float(torch.cat([x[: 3 * g], x[3 * g + 3 :]]).mean()) for g in range(4)]
    mean_loo = sum(loo) / 4
    se = (3 / 4 * sum((v - mean_loo) ** 2 for v in loo)) ** 0.5
    assert e.value == pytest.approx(float(x.mean()))
    assert e.half_width == pytest.approx(t_quantile(3) * se)


def model_with(registry, name):
    torch.manual_seed(0)
    m = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    m.set_quantizers({k: registry.build("quantizer", name) for k in m.latents})
    return m


def probe_set(n=3):
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(2, 3, 64, 64, generator=gen) for _ in range(n)]


MISMATCH = ("mismatch_rate", "mismatch_dist", "mismatch_latent", "mismatch_latent_rate")


@pytest.mark.parametrize("name", ["round", "ste"])
def test_hard_surrogates_have_no_mismatch_by_construction(registry, name):
    mm = mismatch(model_with(registry, name), probe_set(), draws=2)
    for col in MISMATCH:
        assert mm[col] == Estimate.zero("surrogate equals rounding here")


def test_mixed_is_exact_on_its_distortion_path_only(registry):
    """mixed rounds what the synthesis sees (STE) and adds noise to what the rate charges:
    its distortion columns are zero by construction, and labelled so, each on its own;
    its rate columns are estimates."""
    torch.manual_seed(0)
    mm = mismatch(model_with(registry, "mixed"), probe_set(), draws=2)
    for col in ("mismatch_dist", "mismatch_latent"):
        assert mm[col] == Estimate.zero("distortion path equals rounding here"), col
    for col in ("mismatch_rate", "mismatch_latent_rate"):
        assert mm[col].exact == "" and mm[col].value != 0, col
    assert mm["mismatch_latent_rate"].value > 1 / 12 * 0.9  # at least the noise's variance


def test_noise_latent_mismatch_is_at_least_the_noise_variance(registry):
    torch.manual_seed(0)
    mm = mismatch(model_with(registry, "noise"), probe_set(), draws=4)
    assert mm["mismatch_latent"].value > 1 / 12 * 0.9
    assert mm["mismatch_latent"].low < mm["mismatch_latent"].value < mm["mismatch_latent"].high
    assert mm["mismatch_rate"].value != 0
    # noise charges the rate on the values it feeds onwards: both paths measure the same
    assert mm["mismatch_latent_rate"] == mm["mismatch_latent"]


def test_a_backbone_without_rate_latents_leaves_that_column_undefined(registry):
    """A backbone written before ``rate_latents`` (its forward returns only ``latents``):
    the other columns are measured as before, the rate-path latent mismatch says why it
    is missing."""
    registered = type(model_with(registry, "noise"))

    class Older(registered):
        def forward(self, x):
            out = super().forward(x)
            del out["rate_latents"]
            return out

    torch.manual_seed(0)
    m = Older(N=16, M=16)
    m.set_quantizers({k: registry.build("quantizer", "noise") for k in m.latents})
    mm = mismatch(m, probe_set(), draws=2)
    lost = mm["mismatch_latent_rate"]
    assert math.isnan(lost.value) and "returns no rate_latents" in lost.flag
    assert mm["mismatch_latent"].exact == "" and mm["mismatch_latent"].value > 0
    torch.manual_seed(0)
    m.set_quantizers({k: registry.build("quantizer", "ste") for k in m.latents})
    assert mismatch(m, probe_set(), draws=2)["mismatch_dist"].exact


def test_model_gradient_statistics(registry):
    torch.manual_seed(0)
    batches = probe_set()
    ste = model_gradient_statistics(model_with(registry, "ste"), batches, 0.01, draws=4)
    noise = model_gradient_statistics(model_with(registry, "noise"), batches, 0.01, draws=4)
    assert ste["grad_var"] == Estimate.zero("deterministic surrogate")
    assert noise["grad_var"].value > 0 and noise["grad_var"].exact == ""
    for s in (ste, noise):
        b = s["grad_slope_ratio"]
        assert b.value == b.value and b.low <= b.value <= b.high


def test_gradient_statistics_restore_the_weights_bit_for_bit(registry):
    m = model_with(registry, "noise")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    model_gradient_statistics(m, probe_set(2), 0.01, draws=2)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
