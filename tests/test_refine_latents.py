"""Encoding-time refinement of the latents (``[eval] refine_latents``; Yang, Bamler &
Mandt 2020): a better encoder for the same trained model, coded for real."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

import qbench
from qbench.plan.matrix import MatrixError, load_matrix
from qbench.registry import QbenchError
from qbench.run.runner import run_matrix

from .test_runner import tiny

INIT = resources.files("qbench") / "data" / "init" / "mbt2018-mean-48-64.pt"
KW = {"workers": 0, "device": "cpu", "show_progress": False, "echo": lambda *_: None}

MATRIX = """
[matrix]
backbones = [{{ name = "mbt2018-mean", N = 48, M = 64, checkpoint = "{init}" }}]
quantizers = ["noise", "ste"]
lambdas = [0.0067]
datasets = [{{ name = "embedded", split = "eval" }}]
[train]
dataset = {{ name = "embedded", split = "train" }}
steps = 1
batch_size = 2
crop = 64
lr = 1e-9
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
max_images = 2
{refine}
"""


def _matrix(tmp_path, refine, registry, name="m.toml"):
    path = tmp_path / name
    path.write_text(MATRIX.format(init=INIT, refine=refine))
    return load_matrix(path, registry)


def test_plain_jobs_keep_their_ids_and_refined_twins_share_the_training(tmp_path, registry):
    plain = _matrix(tmp_path, "", registry, "a.toml")
    refine = 'refine_latents = { quantizer = "sga", steps = 5, labels = ["noise"] }'
    refined = _matrix(tmp_path, refine, registry, "b.toml")
    assert [j.job_id for j in refined.jobs[:2]] == [j.job_id for j in plain.jobs]
    (twin,) = refined.jobs[2:]
    assert twin.quantizer.label == "noise+refine-sga"
    assert twin.train_id == plain.jobs[0].train_id and twin.job_id != plain.jobs[0].job_id
    other = _matrix(tmp_path, refine.replace("steps = 5", "steps = 6"), registry, "c.toml")
    assert other.jobs[2].job_id != twin.job_id  # the refinement is part of the id


@pytest.mark.slow
def test_refinement_lowers_the_loss_and_codes_bit_exactly(tmp_path, registry):
    """On the shipped trained initialisation: SGA refinement of each image's latents
    gives a lower rate-distortion loss than the plain encoder, on the real bitstream."""
    refine = 'refine_latents = { quantizer = "sga", steps = 60, lr = 5e-3, labels = ["noise"] }'
    m = _matrix(tmp_path, refine, registry)
    run_matrix(m, tmp_path / "run", **KW)
    rows = {}
    for p in (tmp_path / "run" / "rows").glob("*.json"):
        row = json.loads(p.read_text())
        rows[row["quantizer"]] = row
    plain, refined = rows["noise"], rows["noise+refine-sga"]
    assert refined["status"] == "ok" and float(refined["bitexact"]) == 1.0
    assert refined["refined_of"] == "noise" and refined["refine_steps"] == 60
    assert refined["refine_seconds_per_image"] > 0

    def loss(row):  # lambda * 255^2 * MSE + bpp on the bitstream
        mse = 10 ** (-row["psnr"] / 10)
        return 0.0067 * 255**2 * mse + row["bpp_bitstream"]

    assert loss(refined) < 0.97 * loss(plain), (loss(refined), loss(plain))
    from qbench.report.document import write_report

    write_report(tmp_path / "run")
    report = (tmp_path / "run" / "report.md").read_text()
    section = report.split("## Encoding-time refinement")[1].split("\n## ")[0]
    assert "| noise+refine-sga | noise " in section and "| sga " in section


def test_refinement_leaves_the_model_as_it_was(registry):
    from qbench.plan.configs import Refinement
    from qbench.plan.jobs import Spec
    from qbench.run.evaluate import evaluate_image
    from qbench.run.refine import LatentRefiner

    torch.manual_seed(0)
    model = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    model.set_quantizers({k: registry.build("quantizer", "sua") for k in model.latents})
    model.eval().update(force=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    quantizers = dict(model.quantizers.items())
    bound = model.net.gaussian_conditional.lower_bound_scale
    spec = Spec(kind="quantizer", name="sga", label="sga", params={})
    refiner = LatentRefiner(Refinement(spec, 3, 5e-3), registry, 0.01)
    ev = evaluate_image(model, torch.rand(3, 64, 64), "x", refiner)
    assert ev.bitexact and refiner.images == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert dict(model.quantizers.items()) == quantizers and not model.training
    assert model.net.gaussian_conditional.lower_bound_scale is bound
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    ("refine", "match"),
    [
        ('{ quantizer = "round" }', "quantizer: 'round' has no training surrogate"),
        ('{ quantizer = "sgaa" }', "eval.refine_latents.quantizer: .*sga"),
        ('{ quantizer = { name = "sga", tau_max = -1 } }', "eval.refine_latents.quantizer"),
        ('{ quantizer = "sga", steps = 0 }', "eval.refine_latents.steps: expected a positive"),
        ('{ quantizer = "sga", lr = -1.0 }', "eval.refine_latents.lr: expected a positive"),
        ('{ quantizer = "sga", labels = ["nois"] }', "eval.refine_latents.labels: .*noise"),
        ('{ quantizer = "sga", step = 3 }', "eval.refine_latents"),
        ("{ steps = 3 }", "eval.refine_latents.quantizer: missing"),
    ],
)
def test_bad_refinement_is_refused_naming_the_file_and_key(tmp_path, registry, refine, match):
    path = tiny(tmp_path)
    path.write_text(path.read_text() + f"\nrefine_latents = {refine}\n")
    with pytest.raises(MatrixError, match=match) as err:
        load_matrix(path, registry)
    assert str(path) in str(err.value)


def test_a_backbone_without_free_latents_does_not_offer_refinement(registry):
    class Closed(qbench.Backbone):
        latents = ("y",)

    model = registry.build("backbone", "mbt2018-mean", N=16, M=16)
    assert model.offers_refinement() and not Closed().offers_refinement()
    with pytest.raises(QbenchError, match="does not offer its latents"):
        Closed().encode(torch.zeros(1))
