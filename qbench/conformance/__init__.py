"""The plugin conformance suite, a pytest plugin (entry point ``pytest11``).

Inert unless ``--qbench-conformance`` is given; then it adds one test item per
(registered plugin x rule), with ids like ``conformance[myquant-eval_is_hard]``,
so that a failure names the plugin and the broken rule and ``pytest -n auto``
spreads the checks over workers::

    pytest --qbench-conformance                        # every registered plugin
    pytest --qbench-conformance --qbench-quantizer myquant -n auto
    pytest --qbench-conformance --qbench-backbone mycodec      # likewise dataset, metric

With a ``--qbench-KIND NAME`` option only the named plugins are checked, and a
plugin that failed to load is reported as a warning rather than a failure
(it is not the one under test).

The rules are DESIGN.md's contract; each check's docstring states its rule.
A plugin that fails to import shows up as one failing item with the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

KINDS = ("quantizer", "backbone", "dataset", "metric")
RULES: dict[str, dict[str, Callable]] = {
    "quantizer": {},
    "backbone": {},
    "dataset": {},
    "metric": {},
}


class ConformanceFailure(AssertionError):
    """A broken rule; the message names the rule and shows the offending values."""


def rule(kind: str, name: str):
    def deco(fn):
        RULES[kind][name] = fn
        return fn

    return deco


def _fail(rule_name: str, msg: str) -> None:
    raise ConformanceFailure(f"rule {rule_name!r} broken: {msg}")


def _show(t: torch.Tensor, n: int = 6) -> str:
    return str([round(float(v), 5) for v in t.reshape(-1)[:n]])


# ---------------------------------------------------------------------------
# quantizer rules
# ---------------------------------------------------------------------------


def _quantizer(entry):
    """A quantizer from its registration, bound as a backbone binds it (latent ``"y"`` of
    the samples' 3 channels)."""
    q = entry.build()
    q.bind("y", 3)
    return q


def _sample(shape=(2, 3, 8, 8), dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 4).to(dtype=dtype, device=device)


@rule("quantizer", "constructs")
def q_constructs(entry, env):
    """The factory builds a qbench.Quantizer from its defaults."""
    import qbench

    q = entry.build()
    if not isinstance(q, qbench.Quantizer):
        _fail("constructs", f"factory returned {type(q).__name__}, not a qbench.Quantizer")


@rule("quantizer", "shape_dtype")
def q_shape_dtype(entry, env):
    """Outputs keep the input's shape and dtype (float32; float16/bfloat16 where supported)."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        q = _quantizer(entry)
        y = _sample(dtype=dtype)
        means = _sample(dtype=dtype, seed=1)
        for mode in (True, False):
            q.train(mode)
            try:
                out = q(y, means)
            except (RuntimeError, NotImplementedError) as exc:
                if dtype is torch.float32:
                    raise
                env["skipped"].append(f"{dtype} not supported on CPU here: {exc}")
                break
            for field in ("rate", "dist"):
                t = getattr(out, field)
                if t.shape != y.shape or t.dtype != y.dtype:
                    _fail(
                        "shape_dtype",
                        f"{'train' if mode else 'eval'} {field}: input "
                        f"{tuple(y.shape)} {y.dtype} -> output {tuple(t.shape)} {t.dtype}",
                    )


@rule("quantizer", "eval_is_hard")
def q_eval_is_hard(entry, env):
    """In eval mode rate and dist both equal quantize(y, means), with and without means;
    for a uniform quantizer that is round(y - means) + means."""
    q = _quantizer(entry).eval()
    y = _sample()
    for means in (None, _sample(seed=1)):
        out = q(y, means)
        hard = q.quantize(y, means)
        for field in ("rate", "dist"):
            t = getattr(out, field)
            if not torch.equal(t, hard):
                bad = (t != hard).nonzero()[0].tolist()
                _fail(
                    "eval_is_hard",
                    f"eval {field} differs from quantize() "
                    f"{'with' if means is not None else 'without'} means at {bad}: "
                    f"{float(t[tuple(bad)])} != {float(hard[tuple(bad)])}",
                )
        back = q.from_symbols(q.symbols(y, means), means).to(hard.dtype)
        if not torch.equal(back, hard):
            _fail(
                "eval_is_hard",
                "quantize(y, means) must equal from_symbols(symbols(y, means), means) "
                f"(the index protocol); got {_show(hard)} vs {_show(back)}",
            )
        if _integer_lattice(q):
            ref = torch.round(y) if means is None else torch.round(y - means) + means
            if not torch.equal(hard, ref):
                _fail(
                    "eval_is_hard",
                    "a quantizer coded with the integer tables (Quantizer.tables not "
                    f"overridden) must quantize to round(y - means) + means; got {_show(hard)} "
                    f"for {_show(ref)}",
                )


@rule("quantizer", "bins_contain_values")
def q_bins(entry, env):
    """Hard values lie inside their own bins; bins are ordered and non-empty; uniform
    quantizers' bins have width 1 and tile the line."""
    q = _quantizer(entry).eval()
    for means in (None, _sample(seed=1)):
        y_hat = q.quantize(_sample(), means)
        lo, hi = q.bins(y_hat, means)
        if not (lo < hi).all():
            i = (lo >= hi).nonzero()[0].tolist()
            _fail(
                "bins_contain_values",
                f"empty or reversed bin at {i}: [{float(lo[tuple(i)])}, {float(hi[tuple(i)])}]",
            )
        inside = (lo <= y_hat) & (y_hat <= hi)
        if not inside.all():
            i = (~inside).nonzero()[0].tolist()
            _fail(
                "bins_contain_values",
                f"value {float(y_hat[tuple(i)])} outside its bin "
                f"[{float(lo[tuple(i)])}, {float(hi[tuple(i)])}] at {i}",
            )
        if _integer_lattice(q) and q.step() is None:
            if not torch.allclose(hi - lo, torch.ones_like(lo)):
                _fail(
                    "bins_contain_values", f"uniform bins must have width 1, got {_show(hi - lo)}"
                )
            k = torch.arange(-5.0, 6.0)
            lo_k, hi_k = q.bins(k)
            if not torch.equal(hi_k[:-1], lo_k[1:]):
                _fail(
                    "bins_contain_values",
                    f"bins do not tile: uppers {_show(hi_k[:-1])} vs next lowers {_show(lo_k[1:])}",
                )
        elif _integer_lattice(q):  # a quantization step: cells of width step around k * r
            from qbench.tensors import per_channel

            k = torch.arange(-5.0, 6.0).view(1, 1, -1, 1).expand(1, 3, -1, 1)
            step = per_channel(q.step().detach(), k)
            lo_k, hi_k = q.bins(k * per_channel(q.reconstruction_step().detach(), k))
            if not torch.allclose(hi_k - lo_k, step.expand_as(lo_k), rtol=1e-5, atol=1e-6):
                _fail("bins_contain_values", f"bins must have width step, got {_show(hi_k - lo_k)}")
            if not torch.allclose(hi_k[:, :, :-1], lo_k[:, :, 1:], rtol=1e-5, atol=1e-6):
                _fail("bins_contain_values", "bins of consecutive symbols do not tile the line")


@rule("quantizer", "train_gradients")
def q_gradients(entry, env):
    """Training mode gives finite gradients wrt y that are not all zero (exempt when the
    registration metadata says differentiable=False)."""
    if entry.metadata.get("differentiable", True) is False:
        env["skipped"].append("declared non-differentiable")
        return
    q = _quantizer(entry).train()
    for t in (0.0, 0.5):
        q.set_progress(t)
        y = (_sample() + 0.3).requires_grad_()
        out = q(y, _sample(seed=1))
        loss = (out.rate**2).sum() + (out.dist**2).sum()
        if not loss.requires_grad:
            _fail(
                "train_gradients",
                f"at progress {t} the outputs do not depend on y (gradient detached)",
            )
        (g,) = torch.autograd.grad(loss, y)
        if not torch.isfinite(g).all():
            _fail("train_gradients", f"non-finite gradient at progress {t}: {_show(g)}")
        if not (g != 0).any():
            _fail("train_gradients", f"all-zero gradient wrt y at progress {t}")


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
            _fail("set_progress", f"set_progress({t}) raised {type(exc).__name__}: {exc}")
        out = q(_sample(), _sample(seed=1))
        if not (torch.isfinite(out.rate).all() and torch.isfinite(out.dist).all()):
            _fail("set_progress", f"non-finite training output at progress {t}")


@rule("quantizer", "deterministic")
def q_deterministic(entry, env):
    """The same torch.manual_seed gives the same training output."""
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        q = _quantizer(entry).train()
        q.set_progress(0.3)
        out = q(_sample(), _sample(seed=1))
        outs.append((out.rate.detach(), out.dist.detach()))
    for a, b, f in zip(outs[0], outs[1], ("rate", "dist")):
        if not torch.equal(a, b):
            _fail(
                "deterministic",
                f"two runs under manual_seed(123) differ in {f}: {_show(a)} vs {_show(b)}",
            )


@rule("quantizer", "forward_keeps_state")
def q_forward_keeps_state(entry, env):
    """``forward`` changes no state (buffers, parameters), with or without gradients: a
    statistic or a second evaluation that runs the surrogate must not move the quantizer.
    State that evolves with training changes in ``set_progress`` or ``end_step``."""
    q = _quantizer(entry).train()
    q.set_progress(0.3)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    y = _sample().requires_grad_()
    for _ in range(3):
        q(y, _sample(seed=1))
        with torch.no_grad():
            q(y, _sample(seed=1))
    changed = [k for k, v in q.state_dict().items() if not torch.equal(before[k], v)]
    if changed:
        _fail(
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
        _fail("declares_options", f"settings() must map names to plain values, got {settings!r}")
    accepted = entry.parameters()
    for option, need in q.requires.items():
        if option not in accepted and not entry.accepts_any():
            _fail("declares_options", f"requires names {option!r}, not a factory parameter")
        if need not in CAPABILITIES:
            _fail(
                "declares_options",
                f"requires[{option!r}] = {need!r} is not a capability ({sorted(CAPABILITIES)})",
            )
    for caps in (frozenset(), frozenset(CAPABILITIES)):
        idle = q.idle(caps)
        if not isinstance(idle, dict) or not set(idle) <= set(q.requires):
            _fail("declares_options", f"idle({set(caps)}) = {idle!r}: options outside requires")
    if q.idle(frozenset(CAPABILITIES)):
        _fail("declares_options", "options are idle on a latent that offers every capability")


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
    y = _sample()
    if not torch.equal(a(y).dist, b(y).dist):
        _fail(
            "state_dict_roundtrip",
            "a quantizer loaded from another's state_dict quantizes differently",
        )


def _integer_lattice(q) -> bool:
    """Whether ``q`` is coded with the entropy model's integer tables (the base class's)."""
    import qbench

    return type(q).tables is qbench.Quantizer.tables


def _tiny(entry):
    """A backbone from its registration, with small channel counts where it takes N and M."""
    torch.manual_seed(0)
    params = entry.parameters()
    small = {k: 8 for k in ("N", "M") if k in params}
    return entry.build(**small)


def _backbones():
    """Every registered backbone entry (the conformance suite names none)."""
    from qbench.plugins import get_plugins

    return list(get_plugins().registry.entries("backbone"))


def _tiny_backbone(backbone_entry, quantizer_entry):
    m = _tiny(backbone_entry)
    m.set_quantizers({k: quantizer_entry.build() for k in m.latents})
    return m


@rule("quantizer", "backbone_roundtrip")
def q_backbone(entry, env):
    """Inside real CompressAI backbones: one training step, then a real compress/decompress
    whose decoded latents equal the encoder's (bit-exact)."""
    from qbench.rd import rd_loss

    for backbone in _backbones():
        name = backbone.name
        m = _tiny_backbone(backbone, entry).train()
        side = m.multiple
        x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
        m.set_progress(0.0)
        loss = rd_loss(m(x), x, 0.01)[0]
        if not torch.isfinite(loss):
            _fail("backbone_roundtrip", f"{name}: training loss is {float(loss)}")
        loss.backward()
        m.eval()
        m.update(force=True)
        with torch.no_grad():
            enc = m.compress(x[:1])
            dec = m.decompress(enc["strings"], enc["shape"])
        for k in m.latents:
            if not torch.equal(enc["latents"][k], dec["latents"][k]):
                diff = (enc["latents"][k] != dec["latents"][k]).sum().item()
                _fail(
                    "backbone_roundtrip",
                    f"{name}: latent {k!r} decoded differently in {diff} positions",
                )


@rule("quantizer", "cuda")
def q_cuda(entry, env):
    """On a CUDA device the outputs equal the CPU's in eval mode and stay on the device."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    q = _quantizer(entry).eval()
    y = _sample()
    cpu = q(y).dist
    qc = q.to("cuda")
    out = qc(y.cuda(), None)
    if out.dist.device.type != "cuda" or not torch.equal(out.dist.cpu(), cpu):
        _fail("cuda", "CUDA eval output differs from CPU or left the device")
    qc.train()
    yg = y.cuda().requires_grad_()
    qc(yg).dist.sum().backward()


# ---------------------------------------------------------------------------
# backbones, datasets, metrics
# ---------------------------------------------------------------------------


@rule("backbone", "forward_and_roundtrip")
def b_roundtrip(entry, env):
    """forward returns x_hat and likelihoods for every declared latent; padding multiple
    declared; compress/decompress round trip is bit-exact."""
    import qbench

    m = _tiny(entry)
    if not isinstance(getattr(m, "multiple", None), int) or m.multiple < 1:
        _fail("forward_and_roundtrip", f"backbone declares no padding multiple: {m.multiple!r}")
    m.set_quantizers({k: qbench.Quantizer() for k in m.latents})
    x = torch.rand(1, 3, m.multiple, m.multiple)
    out = m.train()(x)
    if out["x_hat"].shape != x.shape:
        _fail(
            "forward_and_roundtrip", f"x_hat shape {tuple(out['x_hat'].shape)} != {tuple(x.shape)}"
        )
    if set(out["likelihoods"]) != set(m.latents):
        _fail(
            "forward_and_roundtrip",
            f"likelihoods for {sorted(out['likelihoods'])}, latents {list(m.latents)}",
        )
    for k, p in out["likelihoods"].items():
        if not ((p > 0) & (p <= 1)).all():
            _fail("forward_and_roundtrip", f"likelihood of {k!r} outside (0, 1]: {_show(p)}")
    m.eval()
    m.update(force=True)
    with torch.no_grad():
        enc = m.compress(x)
        dec = m.decompress(enc["strings"], enc["shape"])
    for k in m.latents:
        if not torch.equal(enc["latents"][k], dec["latents"][k]):
            _fail("forward_and_roundtrip", f"latent {k!r} is not decoded bit-exactly")


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
    m = _tiny(entry)
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
                _fail("routes_quantization", f"forward() never called {method}() of latent {k!r}")
        for method in ("symbols", "tables"):
            if (k, method) not in calls:
                _fail("routes_quantization", f"compress() never called {method}() of latent {k!r}")


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

    m = _tiny(entry)
    caps = {k: m.capabilities(k) for k in m.latents}
    for k, c in caps.items():
        unknown = set(c) - set(CAPABILITIES)
        if unknown:
            _fail("declares_capabilities", f"latent {k!r}: unknown capabilities {sorted(unknown)}")
    m.set_quantizers({k: Watching() for k in m.latents})
    x = torch.rand(1, 3, m.multiple, m.multiple, generator=torch.Generator().manual_seed(0))
    m.train()(x)
    for k in m.latents:
        given = seen.get(k) is not None
        if given != ("means" in caps[k]):
            said = "declares" if "means" in caps[k] else "does not declare"
            _fail(
                "declares_capabilities",
                f"latent {k!r} {said} 'means' but was {'' if given else 'not '}given means",
            )
        learned = given and seen[k].requires_grad
        if learned != ("learned_means" in caps[k]):
            _fail(
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
            _fail(
                "declares_capabilities",
                f"latent {k!r}: scale_bound = 50 {'changed' if moved else 'did not change'} its "
                f"likelihood, 'gaussian_scale' declared = {'gaussian_scale' in caps[k]}",
            )
    m.set_quantizers({k: qbench.Quantizer() for k in m.latents})


@rule("dataset", "rgb_in_unit_range")
def d_rgb(entry, env):
    """Built from its defaults, a dataset yields 3 x H x W float tensors in [0, 1]."""
    from qbench.images import DatasetError

    try:
        ds = entry.build()
    except (DatasetError, TypeError) as exc:
        pytest.skip(f"needs parameters or local data: {exc}")
    if len(ds) == 0:
        _fail("rgb_in_unit_range", "dataset is empty")
    for i in range(min(len(ds), 3)):
        x = ds[i]
        if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
            _fail("rgb_in_unit_range", f"item {i}: shape {tuple(x.shape)} dtype {x.dtype}")
        if float(x.min()) < 0 or float(x.max()) > 1:
            _fail("rgb_in_unit_range", f"item {i}: values in [{float(x.min())}, {float(x.max())}]")


@rule("dataset", "reports_bad_files")
def d_bad(entry, env):
    """A folder-based dataset (one taking ``path``) skips an unreadable file and names it."""
    import tempfile
    import warnings
    from pathlib import Path

    if "path" not in entry.parameters():
        pytest.skip("not folder-based")
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(Path(d) / "ok.png")
        (Path(d) / "broken.png").write_bytes(b"\x89PNG\r\n broken")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                ds = entry.build(path=d)
            except Exception as exc:
                if "broken.png" in str(exc):
                    return
                from qbench.images import DatasetError

                if isinstance(exc, DatasetError):
                    pytest.skip(f"does not read arbitrary files of a folder: {exc}")
                raise
        skipped = " ".join(str(s) for s in getattr(ds, "skipped", []))
        if "broken.png" not in skipped:
            _fail(
                "reports_bad_files", "an unreadable file was neither skipped by name nor reported"
            )


def _noise_quantizer():
    """Additive uniform noise in training, so statistics have a surrogate to measure."""
    import qbench
    from qbench.quantizer import uniform_noise

    class Noise(qbench.Quantizer):
        def forward(self, y, means=None):
            if not self.training:
                return super().forward(y, means)
            y = uniform_noise(y)
            return qbench.Quantized(rate=y, dist=y)

    return Noise()


@rule("metric", "finite_declared_columns")
def m_columns(entry, env):
    """On a real tiny evaluation the metric returns finite numbers, only in declared columns;
    a schedule statistic returns Estimates from ``per_probe`` and changes no model state."""
    from qbench.metric import JobEval
    from qbench.run.evaluate import evaluate

    metric = entry.build()
    cols = tuple(getattr(metric, "columns", ()))
    if not cols:
        _fail("finite_declared_columns", "metric declares no columns")
    backbones = _backbones()
    if not backbones:
        pytest.skip("no backbone is registered to evaluate with")
    m = _tiny(backbones[0])
    m.set_quantizers({k: _noise_quantizer() for k in m.latents})
    x = torch.rand(3, 192, 192)
    avg, _ = evaluate(m, [x], ["x"], [metric], job_eval=JobEval(m, x[None], 0.01, 0))
    from qbench.results import ACCOUNTING

    values = {k: v for k, v in avg.items() if k not in ACCOUNTING}
    extra = set(values) - set(cols)
    if extra:
        _fail("finite_declared_columns", f"undeclared columns {sorted(extra)}")
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            _fail("finite_declared_columns", f"column {k!r} = {v!r} is not a finite number")
    if metric.measures_schedule():
        _check_probe(metric, m, cols)


def _check_probe(metric, model, cols) -> None:
    """A schedule statistic returns an Estimate per declared column (value inside its
    interval) and changes no weight or quantizer state of the model it probes."""
    from qbench.analysis import Estimate, isolated_rng
    from qbench.metric import ProbeEval

    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 64, 64, generator=gen) for _ in range(2)]
    model.train()
    model.set_progress(0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with isolated_rng():
        values = metric.per_probe(ProbeEval(model, batches, 0.01, 0, 0.5, 2))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    if changed:
        _fail("finite_declared_columns", f"per_probe changed the model's state: {changed[:3]}")
    extra = set(values) - set(cols)
    if extra:
        _fail("finite_declared_columns", f"per_probe: undeclared columns {sorted(extra)}")
    for k, e in values.items():
        if not isinstance(e, Estimate):
            _fail("finite_declared_columns", f"per_probe: {k!r} is {e!r}, not a qbench.Estimate")
        if math.isfinite(e.value) and not (e.low <= e.value <= e.high) and not e.flag:
            _fail("finite_declared_columns", f"per_probe: {k!r} = {e} lies outside its interval")
        if not math.isfinite(e.value) and not e.flag:
            _fail(
                "finite_declared_columns", f"per_probe: {k!r} = {e.value} with no flag saying why"
            )


# ---------------------------------------------------------------------------
# pytest plumbing
# ---------------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("qbench", "qbench plugin conformance")
    group.addoption(
        "--qbench-conformance",
        action="store_true",
        default=False,
        help="check registered qbench plugins against the contract",
    )
    for kind in KINDS:
        group.addoption(
            f"--qbench-{kind}",
            action="append",
            default=[],
            metavar="NAME",
            help=f"only check this {kind} (repeatable; with any --qbench-KIND option only the "
            "named plugins are checked)",
        )


class ConformanceItem(pytest.Item):
    def __init__(self, *, check, entry, rule_name, **kw):
        super().__init__(**kw)
        self.check, self.entry, self.rule_name = check, entry, rule_name
        self.add_marker(pytest.mark.qbench_conformance)

    def runtest(self):
        env = {"skipped": []}
        self.check(self.entry, env)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            e = self.entry
            return f"{e.kind} {e.name!r} (plugin {e.plugin!r}, {e.provider}): {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "qbench-conformance", None, self.name


class ImportFailureItem(pytest.Item):
    def __init__(self, *, problem, **kw):
        super().__init__(**kw)
        self.problem = problem

    def runtest(self):
        raise ConformanceFailure(
            f"plugin {self.problem.plugin!r} ({self.problem.distribution}) "
            f"did not load: {self.problem.reason}"
        )

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value)

    def reportinfo(self):
        return "qbench-conformance", None, self.name


def pytest_configure(config):
    config.addinivalue_line("markers", "qbench_conformance: a qbench plugin conformance check")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("--qbench-conformance"):
        return
    from qbench.plugins import get_plugins

    plugins = get_plugins()
    wanted = {kind: config.getoption(f"--qbench-{kind}") for kind in KINDS}
    selecting = any(wanted.values())
    new = []
    broken = [p for p in plugins.problems if "import failed" in p.reason or "rejected" in p.reason]
    if selecting:  # checking named plugins: another plugin's problem is not theirs
        config._qbench_warnings = [
            f"plugin {p.plugin!r} ({p.distribution}) did not load: {p.reason}" for p in broken
        ]
    else:
        for problem in broken:
            new.append(
                ImportFailureItem.from_parent(
                    session, name=f"conformance[{problem.plugin}-plugin_loads]", problem=problem
                )
            )
    for kind, rules in RULES.items():
        for entry in plugins.registry.entries(kind):
            if selecting and entry.name not in wanted[kind]:
                continue
            prefix = entry.name if kind == "quantizer" else f"{kind}:{entry.name}"
            for rule_name, check in rules.items():
                new.append(
                    ConformanceItem.from_parent(
                        session,
                        name=f"conformance[{prefix}-{rule_name}]",
                        check=check,
                        entry=entry,
                        rule_name=rule_name,
                    )
                )
    from qbench.registry import unknown_name_message

    for kind, names in wanted.items():
        missing = set(names) - set(plugins.registry.names(kind))
        if not missing:
            continue
        message = unknown_name_message(kind, sorted(missing)[0], plugins.registry.names(kind))
        if broken:
            message += "; plugins that did not load: " + "; ".join(
                f"{p.plugin} ({p.distribution}): {p.reason}" for p in broken
            )
        raise pytest.UsageError(message)
    items.extend(new)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With ``--qbench-quantizer``, plugins that failed to load are reported, not failed."""
    for line in getattr(config, "_qbench_warnings", []):
        terminalreporter.write_line(f"qbench conformance warning: {line}", yellow=True)
