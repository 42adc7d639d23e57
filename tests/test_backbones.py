"""CompressAI adapters: same likelihoods as CompressAI, real bitstream, checkpoints."""

from __future__ import annotations

import pytest
import torch

from qbench.run.evaluate import crop_back, pad_to

BACKBONES = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]


def small(registry, name, quantizer="round"):
    torch.manual_seed(0)
    m = registry.build("backbone", name, N=16, M=24)
    m.set_quantizers({k: registry.build("quantizer", quantizer) for k in m.latents})
    with torch.no_grad():  # non-trivial medians and densities
        eb = m.net.entropy_bottleneck
        eb.quantiles.add_(torch.randn_like(eb.quantiles) * 0.3)
        for p in eb.parameters():
            if p is not eb.quantiles:
                p.add_(torch.randn_like(p) * 0.05)
    return m


@pytest.mark.parametrize("name", BACKBONES)
def test_likelihoods_equal_compressai_in_eval(registry, name):
    m = small(registry, name).eval()
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        ours = m(x)
        ref = m.net(x)
    assert set(ours["likelihoods"]) == set(ref["likelihoods"]) == set(m.latents)
    for k in m.latents:
        torch.testing.assert_close(
            ours["likelihoods"][k], ref["likelihoods"][k], rtol=1e-5, atol=1e-6
        )
    torch.testing.assert_close(ours["x_hat"], ref["x_hat"])


@pytest.mark.parametrize("name", BACKBONES)
def test_compress_decompress_is_bitexact(registry, name):
    m = small(registry, name).eval()
    m.update(force=True)
    x = torch.rand(1, 3, 70, 90)
    xp, pad = pad_to(x, m.multiple)
    assert xp.shape[-2] % 64 == 0 and xp.shape[-1] % 64 == 0
    with torch.no_grad():
        enc = m.compress(xp)
        dec = m.decompress(enc["strings"], enc["shape"])
        fwd = m(xp)
    for k in m.latents:
        assert torch.equal(enc["latents"][k], dec["latents"][k])
        assert torch.equal(enc["latents"][k], fwd["latents"][k])
    assert crop_back(dec["x_hat"], pad).shape == x.shape
    torch.testing.assert_close(dec["x_hat"], fwd["x_hat"].clamp(0, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES)
def test_uniform_bitstream_is_compressais_own(registry, name):
    """The one coding path gives, for uniform rounding, CompressAI's own bitstream, byte for byte."""
    m = small(registry, name).eval()
    m.update(force=True)
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        ours = m.compress(x)
        ref = m.net.compress(x)
        back = m.net.decompress(ours["strings"], ours["shape"])["x_hat"]
        dec = m.decompress(ref["strings"], ref["shape"])["x_hat"]
    assert ours["strings"] == ref["strings"]
    torch.testing.assert_close(back, dec)


@pytest.mark.parametrize("name", BACKBONES)
def test_training_step_reaches_every_latent(registry, name):
    m = small(registry, name, quantizer="ste").train()
    x = torch.rand(2, 3, 64, 64)
    out = m(x)
    loss = sum((-torch.log2(p)).sum() for p in out["likelihoods"].values()) + out["x_hat"].sum()
    loss.backward()
    assert m.net.g_a[0].weight.grad.abs().sum() > 0
    if hasattr(m.net, "h_a"):
        assert m.net.h_a[0].weight.grad.abs().sum() > 0


def test_checkpoint_round_trip_and_mismatch(registry, tmp_path):
    from qbench_plugins.compressai_backbones import CheckpointError

    m = small(registry, "bmshj2018-hyperprior")
    path = tmp_path / "ckpt.pth"
    torch.save(m.net.state_dict(), path)
    m2 = registry.build("backbone", "bmshj2018-hyperprior", N=16, M=24, checkpoint=str(path))
    for (k, a), b in zip(m.net.state_dict().items(), m2.net.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointError) as info:
        registry.build("backbone", "bmshj2018-hyperprior", N=16, M=32, checkpoint=str(path))
    msg = str(info.value)
    assert str(path) in msg and "'g_a.6.weight'" in msg and "(24, 16, 5, 5)" in msg
    with pytest.raises(CheckpointError) as info:
        registry.build("backbone", "mbt2018-mean", N=16, M=24, checkpoint=str(path))
    assert str(path) in str(info.value)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        registry.build("backbone", "bmshj2018-factorized", N=16, M=24, checkpoint=str(bad))


def test_zoo_path_loads_from_local_cache(registry, tmp_path, monkeypatch):
    """The real CompressAI zoo loader, served from torch hub's cache (no download)."""
    import hashlib

    from compressai.models import FactorizedPrior
    from compressai.zoo.image import model_urls

    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(3)
    ref = FactorizedPrior(128, 192)
    raw = cache / "weights.tmp"
    torch.save(ref.state_dict(), raw)
    name = (
        f"bmshj2018-factorized-prior-1-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth.tar"
    )
    raw.replace(cache / name)  # named by its own hash prefix, as CompressAI's files are
    monkeypatch.setitem(
        model_urls["bmshj2018-factorized"]["mse"], 1, f"https://unused.invalid/{name}"
    )
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    m = registry.build("backbone", "bmshj2018-factorized", pretrained_quality=1)
    assert torch.equal(m.net.g_a[0].weight, ref.g_a[0].weight)
