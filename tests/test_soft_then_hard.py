"""soft-then-hard (Guo et al. 2021) as a weights recipe: its second phase trains the
synthesis and the entropy model through the test-time quantization with the analysis
transform frozen, and the matrix refuses what cannot run before any job."""

from __future__ import annotations

import json

import pytest
import torch

from qbench.plan.matrix import MatrixError, load_matrix
from qbench.plan.preflight import PreflightError, preflight
from qbench.run.runner import run_matrix

from .test_runner import tiny

KW = {"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None}
STH = '[{ name = "noise", label = "noise-sth", soft_then_hard = { hard_steps = 2 } }]'


def _mean_scale(path):
    path.write_text(path.read_text().replace("bmshj2018-factorized", "mbt2018-mean"))
    return path


def _weights(out):
    (row,) = [json.loads(p.read_text()) for p in (out / "rows").glob("*.json")]
    state = torch.load(out / "checkpoints" / f"{row['train_id']}.pt", weights_only=True)
    return row, state.get("model", state)


def _flat(state, prefix=""):
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    out = {}
    for k, v in state.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


@pytest.mark.slow
def test_second_phase_leaves_the_analysis_unchanged(tmp_path, registry):
    """Soft-then-hard at 4 steps (2 hard) against noise at 2 steps from the same
    initialisation and crops: the analysis transform equals the soft phase's to the bit,
    the synthesis and the entropy model moved on."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    sth = _mean_scale(tiny(tmp_path / "a", STH, steps=4))
    soft = _mean_scale(tiny(tmp_path / "b", '[{ name = "noise", label = "noise-sth" }]', steps=2))
    run_matrix(load_matrix(sth, registry), tmp_path / "sth", **KW)
    run_matrix(load_matrix(soft, registry), tmp_path / "soft", **KW)
    row, after = _weights(tmp_path / "sth")
    _, before = _weights(tmp_path / "soft")
    after, before = _flat(after), _flat(before)
    assert row["status"] == "ok" and row["steps"] == 4 and float(row["bitexact"]) == 1.0
    analysis = [k for k in after if ".g_a." in k]
    synthesis = [k for k in after if ".g_s." in k or ".h_s." in k]
    assert analysis and synthesis
    for k in analysis:
        assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in synthesis)


def test_hard_phase_trains_through_the_test_time_quantization(registry):
    from qbench.plan.configs import TrainConfig
    from qbench.run.train import CropSampler, train

    torch.manual_seed(0)
    model = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    model.set_quantizers({k: registry.build("quantizer", "noise") for k in model.latents})
    seen = []
    model.quantizers["y"].register_forward_hook(lambda m, i, o: seen.append(m.training))
    frozen = {id(p) for p in model.parameters_by_name(["analysis"])}
    params = [p for p in model.main_parameters() if id(p) not in frozen]
    images = [torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8) for _ in range(2)]
    config = TrainConfig(
        steps=2, batch_size=2, crop=64, lr=1e-4, aux_lr=1e-3, clip_max_norm=1.0, log_every=0
    )
    sampler = CropSampler(images, 64, 0, "cpu")
    out = train(model, sampler, config, lmbda=0.01, parameters=params, hard=True)
    assert out.status == "ok" and seen and not any(seen)  # eval mode: hard values
    assert model.training and model.quantizers["y"].training is False


@pytest.mark.parametrize(
    ("entry", "steps", "match"),
    [
        ("{ hard_steps = 5 }", 3, "hard_steps: 5 hard steps leave no soft training"),
        ("{ hard_steps = 3 }", 3, "hard_steps: 3 hard steps leave no soft training"),
        ("{ hard_steps = 0 }", 3, "hard_steps: expected a positive integer"),
        ("{ hard_steps = 1, frozen = [] }", 3, "frozen: expected a list"),
        ('{ hard_steps = 1, freeze = ["analysis"] }', 3, "soft_then_hard"),
        ("5", 3, "soft_then_hard: expected"),
    ],
)
def test_bad_soft_then_hard_is_refused_naming_the_key(tmp_path, registry, entry, steps, match):
    q = f'[{{ name = "noise", soft_then_hard = {entry} }}]'
    path = tiny(tmp_path, q, steps=steps)
    with pytest.raises(MatrixError, match=match) as err:
        load_matrix(path, registry)
    assert str(path) in str(err.value) and "matrix.quantizers[0].soft_then_hard" in str(err.value)


def test_unknown_frozen_module_is_refused_before_any_job(tmp_path, registry):
    q = '[{ name = "noise", soft_then_hard = { hard_steps = 1, frozen = ["net.g_x"] } }]'
    path = tiny(tmp_path, q, steps=3)
    with pytest.raises(PreflightError) as err:
        preflight(load_matrix(path, registry), registry)
    text = str(err.value)
    assert str(path) in text and "soft_then_hard.frozen: 'net.g_x' names no parameter" in text
    assert "net.g_a" in text  # the modules it could name
    ok = '[{ name = "noise", soft_then_hard = { hard_steps = 1, frozen = ["analysis", "net.entropy_bottleneck"] } }]'
    preflight(load_matrix(tiny(tmp_path, ok, steps=3), registry), registry)
