"""Backbones with a context model (mbt2018, cheng2020-anchor, cheng2020-attn): every
quantizer routed, serial coding bit-exact, likelihood bpp = bitstream bpp."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import qbench.plugins
from qbench.evaluate import pad_to
from qbench.matrix import load_matrix
from qbench.runner import run_matrix

CONTEXT = ["mbt2018", "cheng2020-anchor", "cheng2020-attn"]
QUANTIZERS = ["round", "noise", "ste", "mixed", "sua", "stanh", "qvrf", "gain"]


def model(registry, backbone, quantizer):
    torch.manual_seed(0)
    m = registry.build("backbone", backbone, N=16, M=24)
    m.set_quantizers({k: registry.build("quantizer", quantizer) for k in m.latents})
    with torch.no_grad():  # latents that are not all zero, non-trivial densities
        convs = [c for c in m.net.g_a.modules() if isinstance(c, torch.nn.Conv2d)]
        convs[-1].weight.mul_(8.0)  # the analysis's last layer
        eb = m.net.entropy_bottleneck
        eb.quantiles.add_(torch.randn_like(eb.quantiles) * 0.3)
    return m


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("backbone", CONTEXT)
def test_serial_coding_is_bitexact_and_the_forward_is_the_decoder(registry, backbone, quantizer):
    m = model(registry, backbone, quantizer).eval()
    m.update(force=True)
    xp, _ = pad_to(torch.rand(2, 3, 70, 90), m.multiple)
    with torch.no_grad():
        enc = m.compress(xp)
        dec = m.decompress(enc["strings"], enc["shape"])
        fwd = m(xp)
    assert enc["latents"]["y"].abs().max() > 1, "the test needs non-zero symbols"
    for k in m.latents:
        assert torch.equal(enc["latents"][k], dec["latents"][k]), k
        assert torch.equal(enc["latents"][k], fwd["latents"][k]), k
    torch.testing.assert_close(dec["x_hat"], fwd["x_hat"].clamp(0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", CONTEXT)
def test_uniform_rounding_codes_compressais_own_stream(registry, backbone):
    """With rounding, the stream is CompressAI's ``_compress_ar`` stream, byte for byte."""
    m = model(registry, backbone, "round").eval()
    m.update(force=True)
    xp, _ = pad_to(torch.rand(1, 3, 64, 64), m.multiple)
    with torch.no_grad():
        ours = m.compress(xp)
        ref = m.net.compress(xp)
        back = m.net.decompress(ours["strings"], ours["shape"])["x_hat"]
    assert ours["strings"][0] == ref["strings"][0]
    torch.testing.assert_close(back, m.decompress(ours["strings"], ours["shape"])["x_hat"])


@pytest.mark.parametrize("backbone", CONTEXT)
def test_training_reaches_the_context_model(registry, backbone):
    m = model(registry, backbone, "noise").train()
    out = m(torch.rand(2, 3, 64, 64))
    bits = sum((-torch.log2(p)).sum() for p in out["likelihoods"].values())
    (bits + out["x_hat"].square().sum()).backward()
    for module in (m.net.g_a, m.net.h_a, m.net.context_prediction, m.net.entropy_parameters):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, module


def odd_images(tmp_path, registry):
    """Odd-sized RGB, grayscale and palette images cut from the embedded crops."""
    folder = tmp_path / "odd"
    folder.mkdir()
    ds = registry.build("dataset", "embedded", split="eval")
    images = [Image.fromarray(ds.uint8(i).permute(1, 2, 0).numpy()) for i in range(3)]
    images[0].crop((0, 0, 175, 131)).save(folder / "odd.png")
    images[1].crop((5, 3, 168, 174)).convert("L").save(folder / "gray.png")
    images[2].crop((3, 1, 174, 158)).convert("P").save(folder / "palette.png")
    return folder


TINY = """
[matrix]
backbones = [{{ name = "{backbone}", N = 16, M = 16 }}]
quantizers = ["noise", "ste", "mixed", "sua", "stanh"]
lambdas = [0.05]
datasets = [{{ name = "folder", path = "{folder}" }}]
[train]
steps = 400
batch_size = 4
crop = 64
lr = 2e-3
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone, check_rate",
    [("mbt2018", True), ("cheng2020-anchor", False), ("cheng2020-attn", False)],
)
def test_tiny_matrix_on_odd_grayscale_and_palette_images(tmp_path, backbone, check_rate):
    """Every surrogate trains and codes bit-exactly; on mbt2018 the likelihood bpp is
    within 5 % of the bitstream's after 400 steps. The Cheng models are not calibrated
    that soon on a CPU (up to 14 % apart for stanh, the bitstream the smaller: an
    untrained model's tails), so for them only the coding is checked here."""
    qbench.plugins.reset()
    registry = qbench.plugins.get_plugins().registry
    folder = odd_images(tmp_path, registry)
    p = tmp_path / "m.toml"
    p.write_text(TINY.format(backbone=backbone, folder=folder))
    out = tmp_path / "run"
    s = run_matrix(
        load_matrix(p, registry), out, device="cpu", show_progress=False, echo=lambda *_: None
    )
    assert s.statuses == {"ok": 5}, s.statuses
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        assert r["bitexact"] == "1.0", r["quantizer"]
        bpp, stream = float(r["bpp"]), float(r["bpp_bitstream"])
        assert bpp > 0 and stream > 0
        if check_rate:
            assert abs(stream - bpp) / bpp < 0.05, (r["quantizer"], bpp, stream)
    with open(out / "per_image.csv") as f:
        per_image = {row["image"] for row in csv.DictReader(f)}
    assert per_image == {"odd.png", "gray.png", "palette.png"}
    assert json.loads((out / "manifest.json").read_text())["statuses"] == {"ok": 5}
