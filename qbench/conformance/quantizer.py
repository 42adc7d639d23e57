"""Quantizer rules: the ``Quantizer`` contract (docs/plugins.md), alone and inside real backbones.

A quantizer is checked as a backbone uses it: bound to latent ``"y"`` of 3
channels, in training (the surrogate: shapes, gradients, determinism, state)
and in eval mode (hard values, bins, the index protocol, a real bitstream).
"""

from __future__ import annotations

import pytest
import torch

from qbench.conformance._fixtures import backbones, sample, tiny
from qbench.conformance._rules import fail, rule, show


def _quantizer(entry):
    """A quantizer from its registration, bound as a backbone binds it (latent ``"y"`` of
    the samples' 3 channels)."""
    q = entry.build()
    q.bind("y", 3)
    return q


@rule("quantizer", "constructs")
def q_constructs(entry, env):
    """The factory builds a qbench.Quantizer from its defaults."""
    import qbench

    q = entry.build()
    if not isinstance(q, qbench.Quantizer):
        fail("constructs", f"factory returned {type(q).__name__}, not a qbench.Quantizer")


@rule("quantizer", "shape_dtype")
def q_shape_dtype(entry, env):
    """Outputs keep the input's shape and dtype (float32; float16/bfloat16 where supported:
    a half precision this torch cannot run on the CPU makes the check a skip that says so)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q = _quantizer(entry)
        y = sample(dtype=dtype)
        means = sample(dtype=dtype, seed=1)
        for mode in (True, False):
            q.train(mode)
            try:
                out = q(y, means)
            except (RuntimeError, NotImplementedError) as exc:
                if dtype is torch.float32:
                    raise
                env["skipped"].append(
                    f"{dtype} not checked: not supported on CPU here ({type(exc).__name__}: {exc})"
                )
                break
            for field in ("rate", "dist"):
                t = getattr(out, field)
                if t.shape != y.shape or t.dtype != y.dtype:
                    fail(
                        "shape_dtype",
                        f"{'train' if mode else 'eval'} {field}: input "
                        f"{tuple(y.shape)} {y.dtype} -> output {tuple(t.shape)} {t.dtype}",
                    )


@rule("quantizer", "eval_is_hard")
def q_eval_is_hard(entry, env):
    """In eval mode rate and dist both equal quantize(y, means), with and without means;
    for a uniform quantizer that is round(y - means) + means."""
    q = _quantizer(entry).eval()
    y = sample()
    for means in (None, sample(seed=1)):
        out = q(y, means)
        hard = q.quantize(y, means)
        for field in ("rate", "dist"):
            t = getattr(out, field)
            if not torch.equal(t, hard):
                bad = (t != hard).nonzero()[0].tolist()
                fail(
                    "eval_is_hard",
                    f"eval {field} differs from quantize() "
                    f"{'with' if means is not None else 'without'} means at {bad}: "
                    f"{float(t[tuple(bad)])} != {float(hard[tuple(bad)])}",
                )
        back = q.from_symbols(q.symbols(y, means), means).to(hard.dtype)
        if not torch.equal(back, hard):
            fail(
                "eval_is_hard",
                "quantize(y, means) must equal from_symbols(symbols(y, means), means) "
                f"(the index protocol); got {show(hard)} vs {show(back)}",
            )
        if _integer_lattice(q):
            ref = torch.round(y) if means is None else torch.round(y - means) + means
            if not torch.equal(hard, ref):
                fail(
                    "eval_is_hard",
                    "a quantizer coded with the integer tables (Quantizer.tables not "
                    f"overridden) must quantize to round(y - means) + means; got {show(hard)} "
                    f"for {show(ref)}",
                )


@rule("quantizer", "bins_contain_values")
def q_bins(entry, env):
    """Hard values lie inside their own bins; bins are ordered and non-empty; uniform
    quantizers' bins have width 1 and tile the line."""
    q = _quantizer(entry).eval()
    for means in (None, sample(seed=1)):
        y_hat = q.quantize(sample(), means)
        lo, hi = q.bins(y_hat, means)
        if not (lo < hi).all():
            i = (lo >= hi).nonzero()[0].tolist()
            fail(
                "bins_contain_values",
                f"empty or reversed bin at {i}: [{float(lo[tuple(i)])}, {float(hi[tuple(i)])}]",
            )
        inside = (lo <= y_hat) & (y_hat <= hi)
        if not inside.all():
            i = (~inside).nonzero()[0].tolist()
            fail(
                "bins_contain_values",
                f"value {float(y_hat[tuple(i)])} outside its bin "
                f"[{float(lo[tuple(i)])}, {float(hi[tuple(i)])}] at {i}",
            )
        if _integer_lattice(q) and q.step() is None:
            if not torch.allclose(hi - lo, torch.ones_like(lo)):
                fail("bins_contain_values", f"uniform bins must have width 1, got {show(hi - lo)}")
            k = torch.arange(-5.0, 6.0)
            lo_k, hi_k = q.bins(k)
            if not torch.equal(hi_k[:-1], lo_k[1:]):
                fail(
                    "bins_contain_values",
                    f"bins do not tile: uppers {show(hi_k[:-1])} vs next lowers {show(lo_k[1:])}",
                )
        elif _integer_lattice(q):  # a quantization step: cells of width step around k * r
            from qbench.tensors import per_channel

            k = torch.arange(-5.0, 6.0).view(1, 1, -1, 1).expand(1, 3, -1, 1)
            step = per_channel(q.step().detach(), k)
            lo_k, hi_k = q.bins(k * per_channel(q.reconstruction_step().detach(), k))
            if not torch.allclose(hi_k - lo_k, step.expand_as(lo_k), rtol=1e-5, atol=1e-6):
                fail("bins_contain_values", f"bins must have width step, got {show(hi_k - lo_k)}")
            if not torch.allclose(hi_k[:, :, :-1], lo_k[:, :, 1:], rtol=1e-5, atol=1e-6):
                fail("bins_contain_values", "bins of consecutive symbols do not tile the line")


@rule("quantizer", "train_gradients")
def q_gradients(entry, env):
    """Training mode gives finite gradients wrt y that are not all zero (exempt when the
    registration metadata says differentiable=False)."""
    if entry.metadata.get("differentiable", True) is False:
        pytest.skip("declared non-differentiable (registered with differentiable=False)")
    q = _quantizer(entry).train()
    for t in (0.0, 0.5):
        q.set_progress(t)
        y = (sample() + 0.3).requires_grad_()
        out = q(y, sample(seed=1))
        loss = (out.rate**2).sum() + (out.dist**2).sum()
        if not loss.requires_grad:
            fail(
                "train_gradients",
                f"at progress {t} the outputs do not depend on y (gradient detached)",
            )
        (g,) = torch.autograd.grad(loss, y)
        if not torch.isfinite(g).all():
            fail("train_gradients", f"non-finite gradient at progress {t}: {show(g)}")
        if not (g != 0).any():
            fail("train_gradients", f"all-zero gradient wrt y at progress {t}")


@rule("quantizer", "set_progress")
def q_progress(entry, env):
    """set_progress accepts every progress in [0, 1] (0, 0.5 and 1 are tried) and the
    quantizer still works after it. The range itself is checked by the caller
    (``Backbone.set_progress``), not by the quantizer."""
    q = _quantizer(entry).train()
    for t in (0.0, 0.5, 1.0):
        try:
            q.set_progress(t)
        except Exception as exc:
            fail("set_progress", f"set_progress({t}) raised {type(exc).__name__}: {exc}")
        out = q(sample(), sample(seed=1))
        if not (torch.isfinite(out.rate).all() and torch.isfinite(out.dist).all()):
            fail("set_progress", f"non-finite training output at progress {t}")


@rule("quantizer", "deterministic")
def q_deterministic(entry, env):
    """The same torch.manual_seed gives the same training output."""
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        q = _quantizer(entry).train()
        q.set_progress(0.3)
        out = q(sample(), sample(seed=1))
        outs.append((out.rate.detach(), out.dist.detach()))
    for a, b, f in zip(outs[0], outs[1], ("rate", "dist")):
        if not torch.equal(a, b):
            fail(
                "deterministic",
                f"two runs under manual_seed(123) differ in {f}: {show(a)} vs {show(b)}",
            )


@rule("quantizer", "forward_keeps_state")
def q_forward_keeps_state(entry, env):
    """``forward`` changes no state (buffers, parameters), with or without gradients: a
    statistic or a second evaluation that runs the surrogate must not move the quantizer.
    State that evolves with training changes in ``set_progress`` or ``end_step``."""
    q = _quantizer(entry).train()
    q.set_progress(0.3)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    y = sample().requires_grad_()
    for _ in range(3):
        q(y, sample(seed=1))
        with torch.no_grad():
            q(y, sample(seed=1))
    changed = [k for k, v in q.state_dict().items() if not torch.equal(before[k], v)]
    if changed:
        fail(
            "forward_keeps_state",
            f"forward changed {changed[:3]}: move per-step state changes to end_step()",
        )


@rule("quantizer", "declares_options")
def q_declares_options(entry, env):
    """``settings()`` holds plain values a row can record; every option named in
    ``requires`` is a factory parameter (so a matrix can set it, and an idle one can be
    refused); ``idle`` answers ``{option: why}`` for options in ``requires`` only, and
    nothing when the latent offers every capability."""
    from qbench.backbone import CAPABILITIES

    q = _quantizer(entry)
    settings = q.settings()
    plain = (str, int, float, bool, type(None))
    if not isinstance(settings, dict) or not all(
        isinstance(k, str) and isinstance(v, plain) for k, v in settings.items()
    ):
        fail("declares_options", f"settings() must map names to plain values, got {settings!r}")
    accepted = entry.parameters()
    for option, need in q.requires.items():
        if option not in accepted and not entry.accepts_any():
            fail("declares_options", f"requires names {option!r}, not a factory parameter")
        if need not in CAPABILITIES:
            fail(
                "declares_options",
                f"requires[{option!r}] = {need!r} is not a capability ({sorted(CAPABILITIES)})",
            )
    for caps in (frozenset(), frozenset(CAPABILITIES)):
        idle = q.idle(caps)
        if not isinstance(idle, dict) or not set(idle) <= set(q.requires):
            fail("declares_options", f"idle({set(caps)}) = {idle!r}: options outside requires")
    if q.idle(frozenset(CAPABILITIES)):
        fail("declares_options", "options are idle on a latent that offers every capability")


@rule("quantizer", "state_dict_roundtrip")
def q_state_dict(entry, env):
    """state_dict() of a trained-looking quantizer loads into a fresh one, same outputs."""
    torch.manual_seed(0)
    a = _quantizer(entry)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.rand_like(p) * 0.01)
    b = _quantizer(entry)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    y = sample()
    if not torch.equal(a(y).dist, b(y).dist):
        fail(
            "state_dict_roundtrip",
            "a quantizer loaded from another's state_dict quantizes differently",
        )


def _integer_lattice(q) -> bool:
    """Whether ``q`` is coded with the entropy model's integer tables (the base class's)."""
    import qbench

    return type(q).tables is qbench.Quantizer.tables


def _tiny_backbone(backbone_entry, quantizer_entry):
    m = tiny(backbone_entry)
    m.set_quantizers({k: quantizer_entry.build() for k in m.latents})
    return m


@rule("quantizer", "backbone_roundtrip")
def q_backbone(entry, env):
    """Inside real CompressAI backbones: one training step, then a real compress/decompress
    whose decoded latents equal the encoder's (bit-exact). A backbone whose latents lack
    what the quantizer needs (``Quantizer.needs``; qbench refuses that pairing before any
    job) is passed over; at least one must serve it."""
    from qbench.rd import rd_loss

    served = 0
    for backbone in backbones():
        name = backbone.name
        m = _tiny_backbone(backbone, entry).train()
        if m.missing_needs(m.quantizers[m.latents[0]], m.latents):
            continue
        served += 1
        side = m.multiple
        x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        m.set_progress(0.0)
        loss = rd_loss(m(x), x, 0.01)[0]
        if not torch.isfinite(loss):
            fail("backbone_roundtrip", f"{name}: training loss is {float(loss)}")
        loss.backward()
        m.eval()
        m.update(force=True)
        with torch.no_grad():
            enc = m.compress(x[:1])
            dec = m.decompress(enc["strings"], enc["shape"])
        for k in m.latents:
            if not torch.equal(enc["latents"][k], dec["latents"][k]):
                diff = (enc["latents"][k] != dec["latents"][k]).sum().item()
                fail(
                    "backbone_roundtrip",
                    f"{name}: latent {k!r} decoded differently in {diff} positions",
                )
    if not served:
        fail("backbone_roundtrip", "no backbone offers what the quantizer needs (Quantizer.needs)")


@rule("quantizer", "cuda")
def q_cuda(entry, env):
    """On a CUDA device the outputs equal the CPU's in eval mode and stay on the device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    q = _quantizer(entry).eval()
    y = sample()
    cpu = q(y).dist
    qc = q.to("cuda")
    out = qc(y.cuda(), None)
    if out.dist.device.type != "cuda" or not torch.equal(out.dist.cpu(), cpu):
        fail("cuda", "CUDA eval output differs from CPU or left the device")
    qc.train()
    yg = y.cuda().requires_grad_()
    qc(yg).dist.sum().backward()
