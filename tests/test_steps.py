"""Learned quantization steps (``qvrf``, ``gain``): the contract's step, real bit-exact
bitstreams, clamping, interpolation, and the derived protocol end to end."""

from __future__ import annotations

import csv
import re

import pandas as pd
import pytest
import torch
from scipy.stats import norm

import qbench.plugins
from qbench.plan.matrix import MatrixError, load_matrix
from qbench.run.evaluate import evaluate_image
from qbench.run.runner import run_matrix

STEP_MIN = 0.05


def make(registry, name, latent="y", channels=4, **params):
    q = registry.build("quantizer", name, **params)
    q.bind(latent, channels)
    return q


def test_qvrf_is_a_scaled_rounding_with_cells_of_width_step(registry):
    q = make(registry, "qvrf", step=0.4).eval()
    torch.manual_seed(0)
    y, mu = torch.randn(2, 4, 5, 5) * 3, torch.randn(2, 4, 5, 5)
    expected = mu + 0.4 * torch.round((y - mu) / 0.4)
    torch.testing.assert_close(q.quantize(y, mu), expected)
    torch.testing.assert_close(q.from_symbols(q.symbols(y, mu), mu), expected)
    lo, hi = q.bins(expected, mu)
    torch.testing.assert_close(hi - lo, torch.full_like(lo, 0.4))
    assert ((lo <= expected) & (expected <= hi)).all()


def test_gain_reconstructs_with_the_inverse_gain(registry):
    q = make(registry, "gain", channels=3)
    with torch.no_grad():
        q.gain.copy_(torch.tensor([2.0, 0.5, 1.0]))
        q.inverse_gain.copy_(torch.tensor([0.4, 1.5, 1.0]))
    q.eval()
    y, mu = torch.randn(1, 3, 6, 6) * 4, torch.randn(1, 3, 6, 6)
    g = torch.tensor([2.0, 0.5, 1.0]).view(1, 3, 1, 1)
    gi = torch.tensor([0.4, 1.5, 1.0]).view(1, 3, 1, 1)
    k = torch.round(g * (y - mu))
    torch.testing.assert_close(q.quantize(y, mu), mu + gi * k)
    torch.testing.assert_close(q.symbols(y, mu), k.long())
    lo, hi = q.bins(mu + gi * k, mu)  # the y-space cell of symbol k: width 1 / g
    torch.testing.assert_close(lo, mu + (k - 0.5) / g)
    torch.testing.assert_close(hi, mu + (k + 0.5) / g)


def test_step_likelihood_is_the_gaussian_mass_of_the_cell(registry):
    """A step's likelihood in the real backbone equals N(mu, sigma) mass of [(k -+ 1/2) step]."""
    torch.manual_seed(0)
    m = registry.build("backbone", "mbt2018-mean", N=8, M=8)
    m.set_quantizers({"y": make(registry, "qvrf", step=0.3), "z": make(registry, "noise")})
    m.eval()
    from functools import partial

    from qbench.likelihoods import gaussian_likelihood

    y = torch.randn(1, 8, 4, 4) * 2
    mu, sigma = torch.randn_like(y), torch.rand_like(y) + 0.5
    gc = m.net.gaussian_conditional
    y_hat, lik = m.quantize_latent(
        "y", y, mu, partial(gaussian_likelihood, gc, scales=sigma, means=mu)
    )
    k = torch.round((y - mu) / 0.3)
    ref = norm.cdf(((k + 0.5) * 0.3 / sigma).numpy()) - norm.cdf(((k - 0.5) * 0.3 / sigma).numpy())
    torch.testing.assert_close(lik, torch.tensor(ref, dtype=torch.float32), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone", ["mbt2018-mean", "bmshj2018-factorized"])
@pytest.mark.parametrize("name", ["qvrf", "gain"])
def test_steps_code_bitexact_and_close_to_the_likelihood(registry, backbone, name):
    torch.manual_seed(0)
    m = registry.build("backbone", backbone, N=16, M=16)
    m.set_quantizers({k: registry.build("quantizer", name) for k in m.latents})
    with torch.no_grad():
        for q in m.quantizers.values():
            for p in q.parameters():
                p.mul_(0.4 + 1.2 * torch.rand_like(p))
    m.eval()
    m.update(force=True)
    images = registry.build("dataset", "embedded", split="eval")
    for i in range(len(images)):
        ev = evaluate_image(m, images[i], images.names[i])
        assert ev.bitexact
        bits = sum(float(-torch.log2(p).sum()) for p in ev.likelihoods.values())
        assert 8 * ev.num_bytes == pytest.approx(bits, rel=0.15, abs=200)


def test_a_step_is_clamped_at_its_minimum_and_the_row_says_so(registry):
    q = make(registry, "qvrf", step=0.5)
    with torch.no_grad():
        q.step_param.fill_(-0.2)
    assert float(q.step().detach()) == pytest.approx(STEP_MIN)
    assert q.settings()["step_clamped"] == 1 and q.settings()["step"] == STEP_MIN
    g = make(registry, "gain", channels=3)
    with torch.no_grad():
        g.gain[0] = 0.0
        g.inverse_gain[1] = -1.0
    assert g.settings()["step_clamped"] == 2
    assert torch.isfinite(g.step()).all() and (g.reconstruction_step() >= STEP_MIN).all()
    with pytest.raises(qbench.registry.PluginParameterError, match="step"):
        registry.build("quantizer", "qvrf", step=0.0)


def test_the_report_notes_a_clamped_step_through_the_declared_report_notes(registry):
    """The report names no plugin setting: the run records each label's
    ``Quantizer.report_notes`` in the manifest, and the report notes the settings that are
    non-zero."""
    from qbench.report.declared import quantizer_notes
    from qbench.report.sections import quantizer_settings
    from qbench.run.runner import quantizer_manifest

    manifest = {
        "quantizers": {
            "a": quantizer_manifest("qvrf", registry),
            "b": quantizer_manifest("noise", registry),
        }
    }
    declared = quantizer_notes(manifest)
    assert set(declared) == {"a", "b"} and "step_clamped" in declared["a"]
    assert set(declared["b"]) == {"stop_gradient"}  # every surrogate's: a routed centre
    df = pd.DataFrame(
        {
            "backbone": "bb",
            "quantizer": ["a", "a", "a", "b"],
            "settings": [
                "step=0.05; step_clamped=1",
                "step=0.05; step_clamped=1",
                "step=1; step_clamped=0",
                "x=1",
            ],
        }
    )
    notes: list[str] = []
    quantizer_settings(df, {}, declared, notes)
    assert notes == [  # b's settings route nothing: no note of it
        "`a` on `bb`: a learned quantization step reached its minimum and was clamped there "
        "in 1 configuration(s) (settings: step_clamped)"
    ]


def test_interpolation_linear_in_step_exponential_in_gain(registry):
    a, b = make(registry, "qvrf", step=0.5), make(registry, "qvrf", step=2.0)
    a.interpolate(b, 0.25)
    assert float(a.step().detach()) == pytest.approx(0.75 * 0.5 + 0.25 * 2.0)
    g1, g2 = make(registry, "gain", channels=2), make(registry, "gain", channels=2)
    with torch.no_grad():
        g1.gain.copy_(torch.tensor([1.0, 4.0]))
        g2.gain.copy_(torch.tensor([4.0, 1.0]))
        g2.inverse_gain.fill_(0.25)
    g1.interpolate(g2, 0.5)
    torch.testing.assert_close(g1.gain.detach(), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(g1.inverse_gain.detach(), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="different"):
        make(registry, "gain", channels=2).interpolate(make(registry, "gain", channels=3), 0.5)


def test_gain_needs_its_channel_count(registry):
    q = registry.build("quantizer", "gain")
    with pytest.raises(ValueError, match="channel count"):
        q.bind("y", None)
    with pytest.raises(qbench.registry.PluginParameterError, match="zero_center"):
        registry.build("quantizer", "gain", zero_center=False)


VR = """
name = "vr"
[matrix]
backbones = [{{ name = "mbt2018-mean", N = 8, M = 8 }}]
quantizers = [
    "noise",
    {{ name = "{q}", latents = ["y"] }},
    {{ name = "{q}", label = "derived", latents = ["y"], from_anchor = 0.01, refine_steps = 4, refine_lr = 0.05 }},
    {{ name = "{q2}", label = "interp", interpolate = {{ of = "derived", between = [0.003, 0.01], points = 3 }} }},
]
lambdas = [0.003, 0.01]
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
steps = 3
batch_size = 2
crop = 64
log_every = 0
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
max_images = 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qvrf", "gain"])
def test_derived_and_interpolated_protocol_end_to_end(tmp_path, name):
    p = tmp_path / "m.toml"
    p.write_text(VR.format(q=name, q2=name))
    plugins = qbench.plugins.get_plugins()
    m = load_matrix(p, plugins.registry)
    run_matrix(m, tmp_path / "run", workers=0, device="cpu", show_progress=False, echo=print)
    with open(tmp_path / "run" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["status"] == "ok" and r["bitexact"] == "1.0" for r in rows)
    derived = [r for r in rows if r["quantizer"] == "derived"]
    per_rate = 1 if name == "qvrf" else 2 * 8  # a step; or a gain and an inverse gain per channel
    assert {int(r["trained_parameters"]) for r in derived} == {per_rate}
    steps = {r["lambda"]: r["settings"] for r in derived}
    assert len(set(steps.values())) == 2  # the refined step differs between the two lambdas
    assert len([r for r in rows if r["quantizer"] == "interp"]) == 3
    from qbench.report import write_report

    rep = write_report(tmp_path / "run", anchor="noise")
    text = (tmp_path / "run" / "report.md").read_text()
    heading = "## Variable rate against separately trained models (`noise`; rate: bitstream"
    assert heading in text
    assert (tmp_path / "run" / "vr_mbt2018-mean_embedded.png") in rep.plots
    kinds = re.findall(r"\|\s*derived\s*\|\s*(derived|interpolated|all)\s*\|", text)
    assert kinds == ["derived", "interpolated", "all"]


def test_interpolating_another_kind_is_refused_before_any_job(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(VR.format(q="qvrf", q2="gain"))
    with pytest.raises(MatrixError, match="'qvrf' quantizer; a 'gain' entry cannot blend it"):
        load_matrix(p, qbench.plugins.get_plugins().registry)


ONE_ANCHOR = """
name = "one"
[matrix]
backbones = [{ name = "mbt2018-mean", N = 8, M = 8 }]
quantizers = [
    "noise",
    { name = "qvrf", latents = ["y"], from_anchor = { of = "noise", lambda = 0.01 }, refine_steps = 3, refine_lr = 0.05 },
    { name = "stanh", latents = ["y"], levels = 21, from_anchor = { of = "noise", lambda = 0.01 }, refine_steps = 3 },
]
lambdas = [0.003, 0.01]
datasets = [{ name = "embedded", split = "eval" }]
[train]
steps = 2
batch_size = 2
crop = 64
log_every = 0
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
max_images = 1
"""


def test_methods_derived_from_one_anchor_share_its_backbone(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(ONE_ANCHOR)
    registry = qbench.plugins.get_plugins().registry
    m = load_matrix(p, registry)
    derived = [j for j in m.jobs if j.quantizer.label != "noise"]
    anchor = next(j for j in m.jobs if j.quantizer.label == "noise" and j.lmbda == 0.01)
    assert {j.recipe.anchor for j in derived} == {anchor.train_id}
    assert all(j.recipe.backbone_only for j in derived)
    out = tmp_path / "run"
    run_matrix(m, out, workers=0, device="cpu", show_progress=False, echo=lambda *_: None)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["status"] == "ok" for r in rows)
    ckpt = {r["quantizer"] + r["lambda"]: r["train_id"] for r in rows}
    a = torch.load(out / "checkpoints" / f"{ckpt['noise0.01']}.pt", weights_only=True)
    d = torch.load(out / "checkpoints" / f"{ckpt['qvrf0.003']}.pt", weights_only=True)
    for key in a:  # the derived model's backbone is the anchor's, bit for bit
        if not key.startswith("quantizers."):
            assert torch.equal(a[key], d[key]), key
    assert "quantizers.y.step_param" in d


@pytest.mark.parametrize(
    "entry, message",
    [
        ('from_anchor = { of = "nois", lambda = 0.01 }', "did you mean 'noise'"),
        ('from_anchor = { of = "noise", lambda = 0.5 }', "not in matrix.lambdas"),
        ('from_anchor = { of = "noise", lamda = 0.01 }', "unknown key"),
        ("from_anchor = 0.01, refine_lr = -1.0", "positive learning rate"),
    ],
)
def test_bad_anchor_references_are_refused(tmp_path, entry, message):
    p = tmp_path / "m.toml"
    p.write_text(
        ONE_ANCHOR.replace(
            'from_anchor = { of = "noise", lambda = 0.01 }, refine_steps = 3, refine_lr = 0.05',
            entry,
        )
    )
    with pytest.raises(MatrixError, match=message):
        load_matrix(p, qbench.plugins.get_plugins().registry)


def test_interpolating_with_other_parameters_is_refused(tmp_path):
    p = tmp_path / "m.toml"
    text = VR.format(q="qvrf", q2="qvrf").replace(
        '{ name = "qvrf", label = "interp",', '{ name = "qvrf", step = 0.5, label = "interp",'
    )
    p.write_text(text)
    with pytest.raises(MatrixError, match="step = 0.5 differs from 'derived'"):
        load_matrix(p, qbench.plugins.get_plugins().registry)
