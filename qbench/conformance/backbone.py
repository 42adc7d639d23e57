"""Backbone rules: the ``Backbone`` contract (forward, padding, a bit-exact bitstream), the
routing of every latent through its plugin quantizer and truthful capabilities."""

from __future__ import annotations

import torch

from qbench.conformance._fixtures import tiny
from qbench.conformance._rules import fail, rule, show


@rule("backbone", "forward_and_roundtrip")
def b_roundtrip(entry, env):
    """forward returns x_hat and likelihoods for every declared latent; padding multiple
    declared; compress/decompress round trip is bit-exact."""
    import qbench

    m = tiny(entry)
    if not isinstance(getattr(m, "multiple", None), int) or m.multiple < 1:
        fail("forward_and_roundtrip", f"backbone declares no padding multiple: {m.multiple!r}")
    m.set_quantizers({k: qbench.Quantizer() for k in m.latents})
    x = torch.rand(1, 3, m.multiple, m.multiple)
    out = m.train()(x)
    if out["x_hat"].shape != x.shape:
        fail(
            "forward_and_roundtrip", f"x_hat shape {tuple(out['x_hat'].shape)} != {tuple(x.shape)}"
        )
    if set(out["likelihoods"]) != set(m.latents):
        fail(
            "forward_and_roundtrip",
            f"likelihoods for {sorted(out['likelihoods'])}, latents {list(m.latents)}",
        )
    for k, p in out["likelihoods"].items():
        if not ((p > 0) & (p <= 1)).all():
            fail("forward_and_roundtrip", f"likelihood of {k!r} outside (0, 1]: {show(p)}")
    m.eval()
    m.update(force=True)
    with torch.no_grad():
        enc = m.compress(x)
        dec = m.decompress(enc["strings"], enc["shape"])
    for k in m.latents:
        if not torch.equal(enc["latents"][k], dec["latents"][k]):
            fail("forward_and_roundtrip", f"latent {k!r} is not decoded bit-exactly")


def _recording_quantizer(calls: list):
    """A rounding quantizer that records which of its contract methods a backbone calls."""
    import qbench

    class Recording(qbench.Quantizer):
        def forward(self, y, means=None):
            calls.append((self.latent, "forward"))
            return super().forward(y, means)

        def bins(self, y_hat, means=None):
            calls.append((self.latent, "bins"))
            return super().bins(y_hat, means)

        def symbols(self, y, means=None):
            calls.append((self.latent, "symbols"))
            return super().symbols(y, means)

        def tables(self, entropy):
            calls.append((self.latent, "tables"))
            return super().tables(entropy)

    return Recording


@rule("backbone", "routes_quantization")
def b_routes(entry, env):
    """Every latent goes through its plugin quantizer: ``forward`` and ``bins`` in the
    forward pass, ``symbols`` and ``tables`` in compress (the index protocol)."""
    calls: list = []
    recording = _recording_quantizer(calls)
    m = tiny(entry)
    quantizers = {}
    for k in m.latents:
        quantizers[k] = recording()
        quantizers[k].latent = k
    m.set_quantizers(quantizers)
    x = torch.rand(1, 3, m.multiple, m.multiple)
    m.train()(x)
    m.eval()
    m.update(force=True)
    with torch.no_grad():
        m(x)
        forward_calls = set(calls)
        calls.clear()
        m.compress(x)
    for k in m.latents:
        for method in ("forward", "bins"):
            if (k, method) not in forward_calls:
                fail("routes_quantization", f"forward() never called {method}() of latent {k!r}")
        for method in ("symbols", "tables"):
            if (k, method) not in calls:
                fail("routes_quantization", f"compress() never called {method}() of latent {k!r}")


@rule("backbone", "declares_capabilities")
def b_capabilities(entry, env):
    """``capabilities(latent)`` tells the truth: names from ``CAPABILITIES``; a latent
    given means (``means``) gets them, learned ones (``learned_means``) with gradient in
    training, and no other latent gets any; a quantizer's ``scale_bound`` changes the
    likelihood of exactly the latents that declare ``gaussian_scale``."""
    import qbench
    from qbench.backbone import CAPABILITIES

    seen: dict = {}

    class Watching(qbench.Quantizer):
        def forward(self, y, means=None):
            seen[self.latent] = means
            return super().forward(y, means)

    m = tiny(entry)
    caps = {k: m.capabilities(k) for k in m.latents}
    for k, c in caps.items():
        unknown = set(c) - set(CAPABILITIES)
        if unknown:
            fail("declares_capabilities", f"latent {k!r}: unknown capabilities {sorted(unknown)}")
    m.set_quantizers({k: Watching() for k in m.latents})
    x = torch.rand(1, 3, m.multiple, m.multiple, generator=torch.Generator().manual_seed(0))
    m.train()(x)
    for k in m.latents:
        given = seen.get(k) is not None
        if given != ("means" in caps[k]):
            said = "declares" if "means" in caps[k] else "does not declare"
            fail(
                "declares_capabilities",
                f"latent {k!r} {said} 'means' but was {'' if given else 'not '}given means",
            )
        learned = given and seen[k].requires_grad
        if learned != ("learned_means" in caps[k]):
            fail(
                "declares_capabilities",
                f"latent {k!r}: means carry gradient = {learned}, 'learned_means' declared = "
                f"{'learned_means' in caps[k]}",
            )

    def likelihoods(bound):
        quantizers = {}
        for k in m.latents:
            quantizers[k] = qbench.Quantizer()
            quantizers[k].scale_bound = bound
        m.set_quantizers(quantizers)
        with torch.no_grad():
            return m.eval()(x)["likelihoods"]

    plain, bounded = likelihoods(None), likelihoods(50.0)
    for k in m.latents:
        moved = not torch.equal(plain[k], bounded[k])
        if moved != ("gaussian_scale" in caps[k]):
            fail(
                "declares_capabilities",
                f"latent {k!r}: scale_bound = 50 {'changed' if moved else 'did not change'} its "
                f"likelihood, 'gaussian_scale' declared = {'gaussian_scale' in caps[k]}",
            )
    m.set_quantizers({k: qbench.Quantizer() for k in m.latents})
