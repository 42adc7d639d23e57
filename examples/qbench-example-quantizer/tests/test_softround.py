import pytest
import torch
from qbench_example_quantizer import SoftRound, soft_round


def test_soft_round_limits():
    y = torch.linspace(-3, 3, 601)
    assert torch.allclose(soft_round(y, 1e-4), y)
    inner = (y - y.round()).abs() < 0.4
    assert torch.allclose(soft_round(y, 60.0)[inner], y.round()[inner], atol=1e-3)
    # continuous at the cell boundaries
    k = torch.tensor([0.5, 1.5, -0.5])
    assert torch.allclose(soft_round(k - 1e-5, 4.0), soft_round(k + 1e-5, 4.0), atol=1e-3)


def test_alpha_schedule_and_eval():
    q = SoftRound()
    q.set_progress(0.0)
    assert q.alpha == pytest.approx(1.0)
    q.set_progress(1.0)
    assert q.alpha == pytest.approx(16.0)
    q.eval()
    y = torch.randn(100) * 3
    assert torch.equal(q(y).dist, torch.round(y))
