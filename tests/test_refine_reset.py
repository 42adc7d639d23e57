"""``refine_reset``: a derived model restarts named quantizer state (STanH's beta) from its
fresh value instead of the anchor's, as the STanH authors do when they derive a rate."""

from __future__ import annotations

import json

import pytest
import torch

from qbench.plan.matrix import MatrixError, load_matrix
from qbench.plan.preflight import PreflightError, preflight
from qbench.run.runner import run_matrix

from .test_runner import tiny

KW = {"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None}
ENTRIES = (  # a large gap factor: the anchor's beta climbs far from 10 in 4 steps
    '[{ name = "stanh", gap_factor = 300.0 }, '
    '{ name = "stanh", label = "kept", gap_factor = 300.0, from_anchor = 0.01, refine_steps = 1 }, '
    '{ name = "stanh", label = "reset", gap_factor = 300.0, from_anchor = 0.01, refine_steps = 1, '
    'refine_reset = ["beta"] }]'
)


def _betas(out):
    betas = {}
    for p in (out / "rows").glob("*.json"):
        row = json.loads(p.read_text())
        state = torch.load(out / "checkpoints" / f"{row['train_id']}.pt", weights_only=True)
        state = state.get("model", state)
        betas[row["quantizer"]] = float(state["quantizers.y.beta"])
    return betas


def test_a_reset_puts_the_fresh_value_back_and_keeps_the_rest_of_the_anchor(registry):
    """The recipe on real parts (a real backbone, STanH and the run wing's Context), with no
    refinement step, so what it loaded is what the model holds."""
    from qbench.plan.configs import TrainConfig
    from qbench.plan.recipes import Origin, Refine
    from qbench.run.weights import Context

    def model():
        m = registry.build("backbone", "bmshj2018-factorized", N=16, M=16)
        m.set_quantizers({"y": registry.build("quantizer", "stanh")})
        return m

    torch.manual_seed(0)
    anchor = model()
    anchor.quantizers["y"].beta.fill_(37.0)  # an anchor whose beta annealed
    state = {k: v.clone() for k, v in anchor.state_dict().items()}
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)]
    config = TrainConfig(
        steps=0, batch_size=1, crop=64, lr=1e-4, aux_lr=1e-3, clip_max_norm=1.0, log_every=0
    )
    ctx = Context(model, lambda _: state, lambda: images, config, 0.01, 0, torch.device("cpu"))
    origin = Origin("stanh", (0.01,))
    for reset, beta in (((), 37.0), (("beta",), 10.0)):
        derived = model()
        Refine("anchor", 0, origin, reset=reset).produce(derived, ctx)
        assert float(derived.quantizers["y"].beta) == beta
        w = "quantizers.y.w" if "quantizers.y.w" in state else "net.g_a.0.weight"
        assert torch.equal(derived.state_dict()[w], state[w])  # the rest is the anchor's


@pytest.mark.slow
def test_a_derived_entry_with_a_reset_runs_and_has_its_own_id(tmp_path, registry):
    m = load_matrix(tiny(tmp_path, ENTRIES, steps=2), registry)
    reset = next(j for j in m.jobs if j.quantizer.label == "reset")
    kept = next(j for j in m.jobs if j.quantizer.label == "kept")
    assert reset.train_id != kept.train_id  # the reset is part of the id
    run_matrix(m, tmp_path / "run", **KW)
    betas = _betas(tmp_path / "run")
    assert betas["stanh"] > 10.0 and betas["kept"] > betas["stanh"], betas
    assert betas["reset"] >= 10.0, betas


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (
            '{ name = "stanh", label = "d", refine_reset = ["beta"] }',
            "refine_reset: only meaningful with",
        ),
        (
            '{ name = "stanh", label = "d", from_anchor = "backbone", refine_reset = ["beta"] }',
            "refine_reset: only meaningful with an anchor entry",
        ),
        (
            '{ name = "stanh", label = "d", from_anchor = 0.01, refine_reset = "beta" }',
            "refine_reset: expected a list",
        ),
    ],
)
def test_bad_refine_reset_is_refused(tmp_path, registry, entry, match):
    path = tiny(tmp_path, f'["stanh", {entry}]')
    with pytest.raises(MatrixError, match=match):
        load_matrix(path, registry)


def test_a_reset_of_another_entrys_anchor_or_an_unknown_name_is_refused(tmp_path, registry):
    other = '["noise", { name = "stanh", from_anchor = { of = "noise", lambda = 0.01 }, refine_reset = ["beta"] }]'
    with pytest.raises(MatrixError, match="no anchor state to reset"):
        load_matrix(tiny(tmp_path, other, name="a.toml"), registry)
    unknown = (
        '["stanh", { name = "stanh", label = "d", from_anchor = 0.01, refine_reset = ["betta"] }]'
    )
    m = load_matrix(tiny(tmp_path, unknown, name="b.toml"), registry)
    with pytest.raises(PreflightError, match="refine_reset: 'betta' is no state of the quantizers"):
        preflight(m, registry)
