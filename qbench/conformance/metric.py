"""Metric rules: declared columns filled with finite numbers on a real tiny evaluation,
schedule statistics that leave the model alone, and declared aggregations that exist."""

from __future__ import annotations

import math

import pytest
import torch

from qbench.conformance._fixtures import backbones, tiny
from qbench.conformance._rules import fail, rule


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
        fail("finite_declared_columns", "metric declares no columns")
    registered = backbones()
    if not registered:
        pytest.skip("no backbone is registered to evaluate with")
    m = tiny(registered[0])
    m.set_quantizers({k: _noise_quantizer() for k in m.latents})
    x = torch.rand(3, 192, 192)
    avg, _ = evaluate(m, [x], ["x"], [metric], job_eval=JobEval(m, x[None], 0.01, 0))
    from qbench.results import ACCOUNTING

    values = {k: v for k, v in avg.items() if k not in ACCOUNTING}
    extra = set(values) - set(cols)
    if extra:
        fail("finite_declared_columns", f"undeclared columns {sorted(extra)}")
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            fail("finite_declared_columns", f"column {k!r} = {v!r} is not a finite number")
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
        fail("finite_declared_columns", f"per_probe changed the model's state: {changed[:3]}")
    extra = set(values) - set(cols)
    if extra:
        fail("finite_declared_columns", f"per_probe: undeclared columns {sorted(extra)}")
    for k, e in values.items():
        if not isinstance(e, Estimate):
            fail("finite_declared_columns", f"per_probe: {k!r} is {e!r}, not a qbench.Estimate")
        if math.isfinite(e.value) and not (e.low <= e.value <= e.high) and not e.flag:
            fail("finite_declared_columns", f"per_probe: {k!r} = {e} lies outside its interval")
        if not math.isfinite(e.value) and not e.flag:
            fail("finite_declared_columns", f"per_probe: {k!r} = {e.value} with no flag saying why")


@rule("metric", "declares_aggregations")
def m_aggregations(entry, env):
    """``aggregate`` maps declared columns to one of ``qbench.metric.AGGREGATIONS`` (any
    other reduction would silently be taken for the mean)."""
    from collections.abc import Mapping

    from qbench.metric import AGGREGATIONS

    metric = entry.build()
    how = getattr(metric, "aggregate", {})
    if not isinstance(how, Mapping):
        fail("declares_aggregations", f"aggregate must map columns to reductions, got {how!r}")
    allowed = ", ".join(repr(a) for a in AGGREGATIONS)
    cols = tuple(getattr(metric, "columns", ()))
    for column, reduction in how.items():
        if reduction not in AGGREGATIONS:
            fail(
                "declares_aggregations",
                f"column {column!r} declares aggregation {reduction!r}; allowed: {allowed}",
            )
        if column not in cols:
            fail(
                "declares_aggregations",
                f"aggregate names column {column!r}, which the metric does not declare "
                f"(columns: {', '.join(cols) or 'none'})",
            )
