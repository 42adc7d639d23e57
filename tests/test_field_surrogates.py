"""The surrogates of ``plugins/field_surrogates.py`` against their formulas, hand values and
the references' behaviour (docs/fidelity.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from qbench.registry import PluginParameterError

from .test_runner import tiny

FIELD = ["pair", "soft-round", "ds-q", "kumaraswamy", "soft-to-hard", "universal"]


def make(registry, name, **params):
    return registry.build("quantizer", name, **params)


def np_soft_round(x, a):
    """Agustsson & Theis 2020, eq. (11), written again from the paper in numpy."""
    m = np.floor(x) + 0.5
    return m + np.tanh(a * (x - m)) / (2 * np.tanh(a / 2))


def np_conditional_mean(s, a):
    """tensorflow-compression's soft_round_conditional_mean, written again in numpy."""
    y = s - 0.5
    m = np.floor(y) + 0.5
    r = np.clip(np.arctanh((y - m) * 2 * np.tanh(a / 2)) / a, -0.5, 0.5)
    return m + r + 0.5


@pytest.mark.parametrize("name", FIELD)
@pytest.mark.parametrize("with_means", [False, True])
def test_eval_mode_is_hard_rounding_around_means(registry, name, with_means):
    torch.manual_seed(0)
    params = {"test_time": "round"} if name == "universal" else {}
    q = make(registry, name, **params).eval()
    q.set_progress(0.4)
    y = torch.randn(2, 4, 8, 8) * 3
    means = torch.randn_like(y) if with_means else None
    out = q(y, means)
    expected = torch.round(y - means) + means if with_means else torch.round(y)
    assert torch.equal(out.rate, expected) and torch.equal(out.dist, expected)


# -- pair ------------------------------------------------------------------------------


def test_pair_noise_ste_is_mixed_to_the_bit(registry):
    y = (torch.randn(4, 3, 8, 8) * 3).requires_grad_()
    means = torch.randn(4, 3, 8, 8).requires_grad_()
    outs = []
    for q in (make(registry, "mixed"), make(registry, "pair", rate="noise", dist="ste")):
        torch.manual_seed(7)
        out = q.train()(y, means)
        g = torch.autograd.grad(out.rate.square().sum() + 3 * out.dist.sum(), (y, means))
        outs.append((out.rate, out.dist, *g))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_pair_routes_each_members_value_and_progress(registry):
    q = make(registry, "pair", rate={"name": "soft-round", "alpha_start": 2.0}, dist="sua").train()
    q.set_progress(1.0)  # sua at T = 0 is hard rounding; soft-round at alpha 16
    assert q.annealing_state() == {"rate.alpha": 16.0, "dist.T": pytest.approx(0.0)}
    y = torch.rand(2000) * 8 - 4
    out = q(y)
    assert torch.equal(out.dist, torch.round(y))
    assert not torch.equal(out.rate, torch.round(y))  # s_a(y) + u
    s = q.settings()
    assert s["rate"] == "soft-round" and s["dist"] == "sua" and s["rate.alpha_start"] == 2.0
    assert "dist.scale_bound" not in s and s["scale_bound"] is None


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"rate": "nosie"}, "pair rate = 'nosie': no quantizer of that name"),
        ({"dist": "noise", "rate": "noise"}, "paired with itself"),
        ({"rate": {"name": "noise", "zero_center": False}}, "'zero_center' is the pair's own"),
        ({"dist": "stanh"}, "pair dist = 'stanh': only a surrogate on the unit integer grid"),
        ({"rate": "gain"}, "pair rate = 'gain': only a surrogate"),
        ({"rate": 3}, "pair rate must be"),
        ({"rate": {"name": "sua", "schedule": "nope"}}, "schedule"),
    ],
)
def test_pair_refuses(registry, params, match):
    with pytest.raises(PluginParameterError, match=match):
        make(registry, "pair", **params)


def test_pair_builds_its_members_from_the_plugin_set_in_use(registry):
    """A pair built after ``--disable-plugin sua`` neither reloads the process-wide plugin
    set (its disabled plugins stay disabled) nor finds the disabled member."""
    import qbench.plugins

    before = qbench.plugins._DEFAULT, qbench.plugins._DEFAULT_KEY
    try:
        plugins = qbench.plugins.get_plugins(("sua",))
        with pytest.raises(PluginParameterError, match="pair dist = 'sua': no quantizer"):
            plugins.registry.build("quantizer", "pair", dist="sua")
        assert qbench.plugins.current_plugins() is plugins
        assert plugins.registry.build("quantizer", "pair", dist="sga").dist_name == "sga"
    finally:
        qbench.plugins._DEFAULT, qbench.plugins._DEFAULT_KEY = before


# -- soft-round -----------------------------------------------------------------------


def test_soft_round_hand_values():
    from qbench_plugins.field_surrogates import soft_round, soft_round_inverse

    # s_1(0.3) = 1/2 + tanh(-0.2) / (2 tanh(1/2)), by hand 0.286445
    assert float(soft_round(torch.tensor(0.3, dtype=torch.float64), 1.0)) == pytest.approx(
        0.5 + math.tanh(-0.2) / (2 * math.tanh(0.5))
    )
    assert 0.5 + math.tanh(-0.2) / (2 * math.tanh(0.5)) == pytest.approx(0.286445, abs=1e-6)
    x = torch.linspace(-3.2, 3.2, 101, dtype=torch.float64)
    for a in (0.5, 1.0, 4.0, 16.0):
        s = soft_round(x, a)
        assert np.allclose(s.numpy(), np_soft_round(x.numpy(), a))
        assert torch.allclose(soft_round_inverse(s, a), x, atol=1e-6)
    assert torch.equal(soft_round(x, 1e-4), x)  # below eps: the identity
    # integers and half-integers are fixed points
    k = torch.tensor([-2.0, -0.5, 0.0, 1.5], dtype=torch.float64)
    assert torch.allclose(soft_round(k, 7.0), k)


def test_soft_round_rate_is_soft_rounded_plus_uniform_and_dist_the_conditional_mean(registry):
    from qbench_plugins.field_surrogates import soft_round

    torch.manual_seed(0)
    q = make(registry, "soft-round").train()
    q.set_progress(0.5)
    assert q.alpha == pytest.approx(8.5)  # linear 1 -> 16
    y = torch.randn(20000, dtype=torch.float64) * 3
    out = q(y)
    offset = (out.rate - soft_round(y, 8.5)).numpy()
    assert stats.kstest(offset, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 0.01
    assert np.allclose(out.dist.numpy(), np_conditional_mean(out.rate.numpy(), 8.5))
    q2 = make(registry, "soft-round", decoder="soft-round").train()
    torch.manual_seed(1)
    out2 = q2(y)
    assert torch.allclose(out2.dist, soft_round(out2.rate, 1.0))
    # the gradient flows through s_a and its inverse, finite and non-zero
    yg = y[:500].clone().requires_grad_()
    out = q(yg)
    (g,) = torch.autograd.grad(out.dist.sum() + out.rate.sum(), yg)
    assert torch.isfinite(g).all() and (g != 0).all()


def test_soft_round_at_a_tiny_sharpness_is_noise(registry):
    q = make(registry, "soft-round", alpha_start=1e-4, alpha_end=1e-4).train()
    y = torch.randn(1000)
    torch.manual_seed(3)
    out = q(y)
    torch.manual_seed(3)
    noisy = y + torch.empty_like(y).uniform_(-0.5, 0.5)
    assert torch.equal(out.rate, noisy) and torch.equal(out.dist, noisy)


# -- ds-q ---------------------------------------------------------------------------


def test_dsq_forward_rounds_backward_is_the_tanh_staircase(registry):
    q = make(registry, "ds-q", k_init=2.0).train()
    y = (torch.rand(3000, dtype=torch.float64) * 8 - 4).requires_grad_()
    out = q(y)
    assert torch.equal(out.dist.detach(), torch.round(y.detach()))
    out.dist.sum().backward()
    k, r = 2.0, (y.detach() - torch.floor(y.detach()) - 0.5).numpy()
    expected = k * (1 - np.tanh(k * r) ** 2) / (2 * np.tanh(k / 2))  # d y_phi / dv
    assert np.allclose(y.grad.numpy(), expected)
    assert q.k.grad is not None and torch.isfinite(q.k.grad)


def test_dsq_k_is_clipped_after_a_step_and_scheduled_when_fixed(registry):
    q = make(registry, "ds-q")  # the reference's k_init 0.1, clipped to [ln 3, 1000]
    assert float(q.k.detach()) == pytest.approx(0.1)
    q.end_step()
    assert float(q.k) == pytest.approx(math.log(3))
    with torch.no_grad():
        q.k.fill_(5000.0)
    q.end_step()
    assert float(q.k) == 1000.0
    fixed = make(registry, "ds-q", learn_k=False, k_init=1.0, k_end=5.0)
    assert fixed.k is None and list(fixed.parameters()) == []
    fixed.set_progress(0.25)
    assert fixed.annealing_state() == {"k": 2.0}
    with pytest.raises(PluginParameterError, match="k_end"):
        make(registry, "ds-q", k_end=5.0)


# -- kumaraswamy ----------------------------------------------------------------------


def test_kumaraswamy_noise_distribution(registry):
    from qbench_plugins.field_surrogates import kumaraswamy_noise

    torch.manual_seed(0)
    like = torch.zeros(20000, dtype=torch.float64)
    uniform = kumaraswamy_noise(like, 1.0).numpy()
    assert stats.kstest(uniform, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 0.01
    a = 2.0
    b = (2**a * (a - 1) + 1) / a  # 2.5: mode 1/2
    assert (a - 1) / (a * b - 1) == pytest.approx(0.5**a)  # mode^a of Kumaraswamy(a, b)
    peaked = kumaraswamy_noise(like, a).numpy() + 0.5
    cdf = lambda x: 1 - (1 - np.clip(x, 0, 1) ** a) ** b  # noqa: E731
    assert stats.kstest(peaked, cdf).pvalue > 0.01
    assert stats.kstest(peaked - 0.5, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue < 1e-6


def test_kumaraswamy_schedule_and_soft_rounding(registry):
    from qbench_plugins.field_surrogates import kumaraswamy_noise, soft_round

    q = make(registry, "kumaraswamy").train()
    q.set_progress(0.5)
    assert q.annealing_state() == {"a": pytest.approx(1.5), "T": pytest.approx(0.2)}
    y = torch.randn(500, dtype=torch.float64) * 2
    torch.manual_seed(4)
    out = q(y)
    torch.manual_seed(4)
    n = kumaraswamy_noise(y, 1.5)
    assert torch.equal(out.rate, soft_round(soft_round(y, 5.0) + n, 5.0))
    plain = make(registry, "kumaraswamy", temperature_start=None, temperature_end=None).train()
    plain.set_progress(1.0)  # a = 1: uniform noise
    torch.manual_seed(5)
    out = plain(y)
    torch.manual_seed(5)
    assert torch.equal(out.dist, y + kumaraswamy_noise(y, 1.0))


# -- soft-to-hard ---------------------------------------------------------------------


def test_soft_to_hard_hand_value_and_schedule(registry):
    q = make(registry, "soft-to-hard").train()
    centres = np.arange(-2, 3)
    w = np.exp(-((0.3 - centres) ** 2))
    expected = float((w / w.sum()) @ centres)  # sigma = 1 at progress 0
    out = q(torch.tensor([0.3], dtype=torch.float64))
    assert float(out.rate) == pytest.approx(expected) and expected == pytest.approx(
        0.2987, abs=1e-4
    )
    q.set_progress(0.5)
    assert q.sigma == pytest.approx(10.0)  # geometric 1 -> 100
    q.set_progress(1.0)
    y = torch.rand(5000) * 8 - 4
    y = y[(y - y.round()).abs() < 0.4]
    assert torch.allclose(q(y).dist, torch.round(y), atol=1e-3)


def test_soft_to_hard_hard_forward_has_the_soft_gradient(registry):
    q = make(registry, "soft-to-hard", forward="hard").train()
    y = (torch.rand(200, dtype=torch.float64) * 6 - 3).requires_grad_()
    out = q(y)
    assert torch.equal(out.dist.detach(), torch.round(y.detach()))
    (g,) = torch.autograd.grad(out.dist.sum(), y)
    y2 = y.detach().clone().requires_grad_()
    (g2,) = torch.autograd.grad(q.soft(y2).sum(), y2)
    assert torch.equal(g, g2) and (g > 0).all()


# -- universal ------------------------------------------------------------------------


def test_universal_dithered_training_is_one_lattice_shift_per_sample(registry):
    torch.manual_seed(0)
    q = make(registry, "universal", train="dithered").train()
    y = (torch.randn(3, 4, 8, 8, dtype=torch.float64) * 3).requires_grad_()
    out = q(y)
    frac = torch.remainder(out.rate.detach(), 1.0)
    for i in range(3):  # all latents of a sample sit on one shifted integer lattice
        spread = torch.remainder(frac[i] - frac[i].flatten()[0] + 0.5, 1.0) - 0.5
        assert spread.abs().max() < 1e-9
    assert not torch.allclose(frac[0].flatten()[0], frac[1].flatten()[0])
    offset = (out.rate - y).detach()
    assert offset.abs().max() <= 0.5
    (g,) = torch.autograd.grad(out.dist.sum(), y)
    assert torch.equal(g, torch.ones_like(g))
    # one draw per sample, in the order of torch's generator: round(y + d) - d
    torch.manual_seed(1)
    out = q(y)
    torch.manual_seed(1)
    d = (torch.rand(3, 1, 1, 1, dtype=torch.float64) - 0.5).expand_as(y)
    assert torch.equal(out.rate.detach(), torch.round(y.detach() + d) - d)


def test_universal_training_is_additive_noise_by_default(registry):
    torch.manual_seed(3)
    y = torch.randn(4, 8, 16, 16) * 3
    torch.manual_seed(4)
    out = make(registry, "universal").train()(y)
    torch.manual_seed(4)
    assert torch.equal(out.rate, make(registry, "noise").train()(y).rate)
    torch.manual_seed(0)
    q = make(registry, "universal", train="dithered", dither="per-element").train()
    y = torch.randn(20000) * 3
    offset = (q(y).rate - y).numpy()
    assert stats.kstest(offset, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 0.01


def test_universal_test_time_error_is_uniform_and_independent_of_y(registry):
    """The same constant latent: rounding gives one error, universal quantization errors
    spread over (-1/2, 1/2), one per dither level, whatever the constant. The dither takes
    15 levels (tensorflow-compression's), so the errors sit on a lattice of spacing 1/16
    whose phase follows y: independent of y up to that spacing."""
    q = make(registry, "universal").eval()
    q.bind("y", 8)
    means = torch.zeros(1, 8, 16, 16)
    for value in (0.3, 2.7, -5.1):
        y = torch.full((1, 8, 16, 16), value, dtype=torch.float64)
        err = (q(y, means.double()).dist - y).flatten()
        rounded = make(registry, "round").eval()(y, means).dist
        assert len(torch.unique(rounded - y)) == 1  # rounding: one error for one value
        levels = torch.unique(err.round(decimals=9))
        assert err.abs().max() <= 0.5 and len(levels) == 15
        steps = levels.diff() * 16  # 15 of the 16 lattice points in (-1/2, 1/2]
        assert torch.allclose(steps, steps.round()) and float(steps.max()) <= 2 + 1e-9
        assert abs(float(err.mean())) < 1 / 16
    # over varied latents the error is uniform on (-1/2, 1/2) and uncorrelated with y
    torch.manual_seed(0)
    y = torch.randn(4, 8, 32, 32, dtype=torch.float64) * 3
    err = (q(y, torch.zeros_like(y)).dist - y).flatten().numpy()
    assert stats.wasserstein_distance(err, np.linspace(-0.5, 0.5, 10001)) < 1 / 64
    assert abs(np.corrcoef(err, y.flatten().numpy())[0, 1]) < 0.03
    # the decoder regenerates the dither: symbols -> values is the encoder's quantize
    y = torch.randn(2, 8, 16, 16) * 3
    mu = torch.randn_like(y)
    assert torch.equal(q.from_symbols(q.symbols(y, mu), mu), q.quantize(y, mu))
    # one dither pattern per image: an image quantizes alike alone or in a batch
    assert torch.equal(q.quantize(y, mu)[1], q.quantize(y[1:], mu[1:])[0])


@pytest.mark.parametrize(
    "backbone", ["mbt2018-mean", "bmshj2018-hyperprior", "bmshj2018-factorized"]
)
def test_universal_codes_bit_exactly_at_the_rate_it_charges(registry, backbone):
    torch.manual_seed(0)
    model = registry.build("backbone", backbone, N=16, M=16)
    model.set_quantizers({lat: make(registry, "universal") for lat in model.latents})
    model.eval()
    model.update(force=True)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = model(x)
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])
    for lat in model.latents:
        assert torch.equal(enc["latents"][lat], dec["latents"][lat]), lat
        assert torch.equal(enc["latents"][lat], out["latents"][lat]), lat
        frac = torch.remainder(enc["latents"][lat], 1.0)
        assert len(torch.unique(frac.round(decimals=4))) > 1  # dithered, not an integer grid
    assert torch.allclose(dec["x_hat"], out["x_hat"].clamp(0, 1), atol=1e-5)
    bits = sum(float(-torch.log2(p).sum()) for p in out["likelihoods"].values())
    coded = 8 * sum(len(s[0]) for s in enc["strings"])
    assert abs(coded - bits) < 0.05 * bits + 64 * len(enc["strings"]), (coded, bits)


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("soft-round", {"alpha_start": 0.0}, "alpha_start must be finite and > 0"),
        ("soft-round", {"alpha_end": -1.0}, "alpha_end"),
        ("soft-round", {"alpha_end": float("inf")}, "alpha_end"),
        ("soft-round", {"decoder": "median"}, "decoder"),
        ("ds-q", {"k_init": 0.0}, "k_init"),
        ("ds-q", {"learn_k": False, "k_end": -2.0}, "k_end"),
        ("kumaraswamy", {"noise_start": 0.5}, "noise_start must be finite and >= 1"),
        ("kumaraswamy", {"noise_end": 0.0}, "noise_end"),
        ("kumaraswamy", {"temperature_start": 0.0}, "temperature_start"),
        ("kumaraswamy", {"temperature_end": None}, "temperature_start and temperature_end"),
        ("soft-to-hard", {"sigma_start": 0.0}, "sigma_start"),
        ("soft-to-hard", {"sigma_end": -3.0}, "sigma_end"),
        ("soft-to-hard", {"radius": 0}, "radius"),
        ("soft-to-hard", {"forward": "both"}, "forward"),
        ("universal", {"test_time": "dither"}, "test_time must be one of"),
        ("universal", {"dither": "per-batch", "train": "dithered"}, "dither must be"),
        ("universal", {"dither": "per-element"}, "training dither of train = 'dithered'"),
        ("universal", {"levels": 0}, "levels must be"),
        ("universal", {"seed": -1}, "seed must be"),
    ],
)
def test_annealing_parameters_out_of_range_are_refused(registry, name, params, match):
    with pytest.raises(PluginParameterError, match=match):
        make(registry, name, **params)


# -- a real tiny run: bit-exact coding, pair == mixed -----------------------------------


def _flat(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}/{k}"))
        return out
    return {}


@pytest.mark.slow
def test_tiny_run_codes_bit_exactly_and_pair_trains_as_mixed(tmp_path, registry):
    import json

    from qbench.plan.matrix import load_matrix
    from qbench.run.runner import run_matrix

    quantizers = (
        '["mixed", { name = "pair", rate = "noise", dist = "ste" }, "soft-round", "ds-q", '
        '"kumaraswamy", "soft-to-hard", "universal", { name = "pair", label = "sua+dsq", '
        'rate = { name = "sua", schedule = "linear" }, dist = "ds-q" }]'
    )
    path = tiny(tmp_path, quantizers, steps=2)  # test_runner's tiny matrix, on mbt2018-mean
    path.write_text(path.read_text().replace("bmshj2018-factorized", "mbt2018-mean"))
    m = load_matrix(path, registry)
    out = tmp_path / "run"
    kw = {"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None}
    run_matrix(m, out, **kw)
    rows = {}
    for p in (out / "rows").glob("*.json"):
        row = json.loads(p.read_text())
        rows[row["quantizer"]] = row
    assert len(rows) == 8, sorted(rows)
    for label, row in rows.items():
        assert row["status"] == "ok", (label, row.get("reason"))
        assert float(row["bitexact"]) == 1.0, label
    ckpt = {
        label: _flat(torch.load(out / "checkpoints" / f"{row['train_id']}.pt", weights_only=True))
        for label, row in rows.items()
    }
    pair_label = next(k for k in rows if k.startswith("pair"))
    # a member's learned parameter (ds-q's k) is saved with the model
    assert any(k.endswith("dist_q.k") for k in ckpt["sua+dsq"]), sorted(ckpt["sua+dsq"])
    a, b = ckpt["mixed"], ckpt[pair_label]
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert rows["mixed"]["bpp"] == rows[pair_label]["bpp"]


def test_reductions_are_named(registry):
    pair = make(registry, "pair", rate="noise", dist="ste")
    assert pair.reduces_to(1.0).startswith("mixed (noise for the rate, ste for the synthesis)")
    assert make(registry, "pair", rate="noise", dist="ds-q").reduces_to(1.0) == ""
    plain = make(registry, "universal", test_time="round")
    assert plain.reduces_to(0.3).startswith("noise (additive uniform noise, gradient 1)")
    assert make(registry, "universal").reduces_to(1.0) == ""


def test_universal_member_of_a_pair_gives_its_training_values(registry):
    torch.manual_seed(0)
    pair = make(registry, "pair", rate="noise", dist={"name": "universal", "train": "dithered"})
    y = torch.randn(2, 4, 8, 8) * 3
    out = pair.eval()(y)
    assert torch.equal(out.dist, torch.round(y))  # the pair's test time rounds


def test_universal_dithered_on_a_context_model_is_refused_before_any_job(tmp_path, registry):
    from qbench.plan.matrix import load_matrix
    from qbench.plan.preflight import PreflightError, preflight

    path = tiny(tmp_path, '["universal"]', steps=1)
    path.write_text(path.read_text().replace("bmshj2018-factorized", "mbt2018"))
    with pytest.raises(PreflightError) as err:
        preflight(load_matrix(path, registry), registry)
    text = str(err.value)
    assert str(path) in text and "matrix.quantizers ('universal')" in text
    assert "latent 'y'" in text and "dithered_coding" in text
    path.write_text(
        path.read_text().replace('["universal"]', '[{ name = "universal", test_time = "round" }]')
    )
    preflight(load_matrix(path, registry), registry)  # rounding at test time: served
