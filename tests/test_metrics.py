"""The rate-distortion metrics against values known in closed form."""

from __future__ import annotations

import pytest
import torch
from qbench_plugins.metrics import ms_ssim

from qbench.rd import psnr


def test_psnr_known_value():
    x = torch.rand(1, 3, 32, 32) * 0.6 + 0.2
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert psnr(x, x) == float("inf")
    # values outside [0, 1] are clamped first (PSNR of what a viewer sees)
    assert psnr(torch.ones(1, 3, 8, 8), torch.full((1, 3, 8, 8), 1.5)) == float("inf")


def test_ms_ssim_known_values():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 192, 192)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    noisy = [ms_ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2] > 0
    # 5 scales need > 160 px: not applicable, not a NaN that looks like a failure
    assert ms_ssim(x[..., :100, :100], x[..., :100, :100]) is None


def test_bpp_counts_bits_over_unpadded_pixels(registry):
    from qbench.metric import ImageEval

    lik = {"y": torch.full((1, 4, 2, 2), 0.5), "z": torch.full((1, 2, 1, 1), 0.25)}
    ev = ImageEval(
        "x",
        torch.zeros(1, 3, 10, 10),
        torch.zeros(1, 3, 10, 10),
        lik,
        100,
        3,
        True,
        torch.zeros(1, 3, 64, 64),
        None,
    )
    assert registry.build("metric", "bpp").per_image(ev)["bpp"] == pytest.approx((16 + 4) / 100)
    out = registry.build("metric", "bpp_bitstream").per_image(ev)
    assert out == {"bpp_bitstream": 0.24, "bitexact": 1.0}
