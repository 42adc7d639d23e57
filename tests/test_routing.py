"""The gradient-routing table of docs/quantizers.md, asserted on a real mbt2018-mean.

For each row (a quantizer and its zero-centre setting) the rate and the
distortion terms are differentiated with respect to the latent ``y``, its
mean ``mu`` and its scale ``sigma``; "yes" must be a non-zero gradient, "no"
a zero one (below 1e-6 of the term's largest gradient).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from qbench.likelihoods import gaussian_likelihood

DOC = Path(__file__).resolve().parents[1] / "docs" / "quantizers.md"
VARIABLES = ("y", "mu", "sigma")


def routing_table() -> list[dict[str, str]]:
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index("<!-- routing-table: parsed by tests/test_routing.py -->") + 1
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


ROWS = routing_table()


def test_the_table_covers_every_builtin_and_setting():
    covered = {(r["quantizer"], r["zero_center"], r["stop_gradient"]) for r in ROWS}
    for name in (
        *("noise", "ste", "mixed", "sua", "sga", "stanh"),
        *("pair", "soft-round", "ds-q", "kumaraswamy", "soft-to-hard", "universal"),
    ):
        for setting in (("false", "none"), ("true", "none"), ("true", "partial")):
            assert (name, *setting) in covered
    assert ("round", "-", "-") in covered


@pytest.fixture(scope="module")
def model_and_latent(registry):
    torch.manual_seed(0)
    model = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = model.net.g_a(x) * 4  # spread the latents over several integers
        scales, means = model.net.h_s(model.net.h_a(y)).chunk(2, 1)
    return model, x, y, scales.abs() + 1.0, means  # scales above the lower bound


@pytest.mark.parametrize("row", ROWS, ids=lambda r: "-".join(list(r.values())[:3]))
def test_gradient_routing(registry, model_and_latent, row):
    model, x, y0, s0, m0 = model_and_latent
    params = {}
    if row["zero_center"] != "-":
        params = {
            "zero_center": row["zero_center"] == "true",
            "stop_gradient": row["stop_gradient"],
        }
    q = registry.build("quantizer", row["quantizer"], **params)
    model.set_quantizers({"y": q, "z": registry.build("quantizer", "noise")})
    model.train()
    model.set_progress(0.5)
    y, mu, sigma = (t.clone().requires_grad_() for t in (y0, m0, s0))
    gc = model.net.gaussian_conditional
    torch.manual_seed(1)
    value, lik = model.quantize_latent(
        "y", y, mu, partial(gaussian_likelihood, gc, scales=sigma, means=mu)
    )
    terms = {"rate": -torch.log2(lik).sum(), "dist": ((model.net.g_s(value) - x) ** 2).mean()}
    for term, loss in terms.items():
        grads = torch.autograd.grad(loss, [y, mu, sigma], retain_graph=True, allow_unused=True)
        size = {v: 0.0 if g is None else float(g.abs().max()) for v, g in zip(VARIABLES, grads)}
        largest = max(size.values())
        for v in VARIABLES:
            expected = row[f"{term} → {v}"]
            got = "yes" if size[v] > 1e-6 * largest else "no"
            assert got == expected, (
                f"{term} -> {v}: max |grad| {size[v]:.3g} (largest {largest:.3g})"
            )
