"""qbench's trained weights and curves in CompressAI's own tools, on a real tiny run.

``qbench export --format compressai`` must give a file that CompressAI's model class
loads strictly and that ``compressai.utils.eval_model`` evaluates to the job's own
numbers: same weights, same image, same centred padding to 64 and the same rANS
coder, so the bitstream is the same bytes (bpp equal) and the likelihoods the same
(bpp within float rounding); the PSNR differs only by ``eval_model`` measuring the
8-bit rounded reconstruction (within 0.01 dB here). ``qbench report --format
compressai-json`` must give files that ``compressai.utils.plot`` draws.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from importlib import resources

import pytest
import torch
import torch.nn.functional as F

import qbench
from qbench.cli import main
from qbench.images import load_image
from qbench.plan.matrix import load_matrix
from qbench.registry import QbenchError
from qbench.run.runner import run_matrix

MATRIX = """
name = "interop"
[matrix]
backbones = [{ name = "mbt2018-mean", N = 16, M = 16 }]
quantizers = ["noise"]
lambdas = [0.001, 0.01]
datasets = [{ name = "embedded", split = "eval" }]
seeds = [0, 1]
[train]
steps = 2
batch_size = 2
crop = 64
lr = 1e-3
[eval]
metrics = ["bpp", "bpp_bitstream", "psnr", "ms_ssim"]
max_images = 1
"""

#: eval_model's PSNR is of the 8-bit rounded reconstruction, qbench's of the float one.
PSNR_TOLERANCE_DB = 0.01


@pytest.fixture(scope="module")
def run(tmp_path_factory, registry):
    """Four real 2-step trainings of mbt2018-mean (N = M = 16), one at a time: two lambdas,
    two seeds."""
    root = tmp_path_factory.mktemp("interop")
    matrix = root / "interop.toml"
    matrix.write_text(MATRIX)
    out = root / "run"
    run_matrix(
        load_matrix(matrix, registry),
        out,
        workers=0,
        device="cpu",
        show_progress=False,
        echo=lambda *_: 0,
    )
    return out


def _rows(run) -> list[dict]:
    with open(run / "results.csv") as f:
        return list(csv.DictReader(f))


def _image(run, tmp_path):
    """The image the run evaluated, copied from qbench's embedded set into a folder of its own."""
    with open(run / "per_image.csv") as f:
        (name,) = {r["image"] for r in csv.DictReader(f)}
    folder = tmp_path / "images"
    folder.mkdir()
    with resources.as_file(resources.files("qbench") / "data" / "images" / name) as src:
        shutil.copy(src, folder / name)
    return folder, folder / name


def _eval_model_cli(argv, capsys) -> dict:
    """``python -m compressai.utils.eval_model ARGV``, run in this process (its main())."""
    from compressai.utils.eval_model import __main__ as eval_model

    threads = torch.get_num_threads()  # eval_model sets one thread at import
    try:
        capsys.readouterr()
        eval_model.main(argv)
        return json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(threads)


def test_exported_weights_give_the_jobs_numbers_in_compressai(run, tmp_path, capsys):
    from compressai.models import MeanScaleHyperprior
    from compressai.ops import compute_padding

    path = tmp_path / "mbt2018-mean.pt"
    argv = ["export", str(run), "--quantizer", "noise", "--lambda", "0.01", "--seed", "1"]
    assert main([*argv, "--format", "compressai", "--out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "architecture mbt2018-mean" in printed
    assert f"eval_model checkpoint IMAGE_FOLDER -a mbt2018-mean -p {path}" in printed
    (row,) = [r for r in _rows(run) if r["seed"] == "1" and float(r["lambda"]) == 0.01]

    state = torch.load(path, map_location="cpu", weights_only=True)
    assert not [k for k in state if k.startswith(("net.", "quantizers.", "_default"))]
    assert set(state) == set(MeanScaleHyperprior(16, 16).state_dict())
    assert state["gaussian_conditional._quantized_cdf"].numel() > 0  # the tables travel
    net = MeanScaleHyperprior.from_state_dict(state).eval()  # strict load, no update

    folder, image = _image(run, tmp_path)
    x = load_image(image)[None]
    h, w = x.shape[-2:]
    pad, _ = compute_padding(h, w, min_div=64)  # eval_model's padding
    with torch.no_grad():
        likelihoods = net(F.pad(x, pad))["likelihoods"]
    bpp = sum(float(-torch.log2(p).sum()) for p in likelihoods.values()) / (h * w)
    assert bpp == pytest.approx(float(row["bpp"]), rel=1e-5)

    measured = _eval_model_cli(
        ["checkpoint", str(folder), "-a", "mbt2018-mean", "-p", str(path)], capsys
    )["results"]
    assert measured["bpp"] == [pytest.approx(float(row["bpp_bitstream"]), rel=1e-12)]
    (psnr,) = measured["psnr-rgb"]
    assert abs(psnr - float(row["psnr"])) < PSNR_TOLERANCE_DB
    assert measured["ms-ssim-rgb"] == [pytest.approx(float(row["ms_ssim"]), abs=1e-3)]


def test_a_quantizer_that_decodes_otherwise_is_refused(registry):
    def model(quantizer, **params):
        m = registry.build("backbone", "mbt2018-mean", N=16, M=16)
        m.set_quantizers(
            {"y": registry.build("quantizer", quantizer, **params), "z": qbench.Quantizer()}
        )
        return m

    with pytest.raises(QbenchError, match=r"latent 'y' \(QVRF\) has a quantization step \(0.5\)"):
        model("qvrf", step=0.5).export_state_dict("compressai")
    with pytest.raises(QbenchError, match=r"latent 'y' \(STanH\) quantizes by its own quantize"):
        model("stanh").export_state_dict("compressai")
    # a unit step decodes as CompressAI does: exported, CompressAI's keys only
    m = model("qvrf", step=1.0)
    assert set(m.export_state_dict("compressai")) == set(m.net.state_dict())
    assert m.export_architecture("compressai") == "mbt2018-mean"
    with pytest.raises(QbenchError, match=r"backbone MeanScale cannot export .* format 'onnx'"):
        m.export_state_dict("onnx")
    # the contract's default refuses, naming the backbone and the format
    with pytest.raises(
        QbenchError, match=r"backbone Backbone cannot export .* format 'compressai'"
    ):
        qbench.Backbone().export_state_dict("compressai")


def test_curves_as_compressai_results_files_that_its_plot_draws(run, tmp_path, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from compressai.utils.plot import __main__ as plot

    assert main(["report", str(run), "--format", "compressai-json"]) == 0
    (path,) = sorted((run / "compressai").glob("*.json"))
    assert str(path) in capsys.readouterr().out
    doc = json.loads(path.read_text())
    assert set(doc) == {"name", "description", "results", "qbench"}
    assert doc["name"] == "mbt2018-mean, noise"
    assert "real bitstream" in doc["description"] and "2 seed(s)" in doc["description"]
    results = doc["results"]
    assert set(results) == {"bpp", "psnr-rgb", "ms-ssim-rgb"}
    assert results["bpp"] == sorted(results["bpp"]) and len(results["bpp"]) == 2
    rows = _rows(run)
    for i, lmbda in enumerate(doc["qbench"]["lambda"]):
        mine = [r for r in rows if math.isclose(float(r["lambda"]), lmbda)]
        assert len(mine) == 2  # the two seeds, averaged
        for key, column in (
            ("bpp", "bpp_bitstream"),
            ("psnr-rgb", "psnr"),
            ("ms-ssim-rgb", "ms_ssim"),
        ):
            mean = sum(float(r[column]) for r in mine) / 2
            assert results[key][i] == pytest.approx(mean, rel=1e-12)

    for metric in ("psnr", "ms-ssim"):
        png = tmp_path / f"rd-{metric}.png"
        plot.main(["-f", str(path), "-m", metric, "-o", str(png)])
        assert png.is_file() and png.stat().st_size > 0
    drawn = plot.parse_json_file(path, "psnr")
    assert drawn["xs"] == results["bpp"] and drawn["name"] == doc["name"]

    elsewhere = tmp_path / "curves"
    assert main(["report", str(run), "--format", "compressai-json", "--out", str(elsewhere)]) == 0
    assert [p.name for p in elsewhere.glob("*.json")] == [path.name]
