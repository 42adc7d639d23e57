"""Published reference curves (download, checks, report) and qbench verify-zoo."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from PIL import Image

from qbench import reference
from qbench.fetch import FetchError
from qbench.plan.matrix import MatrixError, load_matrix
from qbench.registry import QbenchError
from qbench.report import reference_rows

from .test_context_models import zoo_cache
from .test_runner import tiny


def curve_file(folder, name, bpp, psnr):
    """A published-curve file in CompressAI's results format; returns its SHA-256."""
    doc = {"name": name, "description": "test", "results": {"bpp": bpp, "psnr-rgb": psnr}}
    data = json.dumps(doc).encode()
    (folder / f"{name}.json").write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def own_catalogue(tmp_path, monkeypatch, curves: dict, dataset="embedded"):
    """A catalogue of test-made curves (``$QBENCH_REFERENCE_CATALOGUE``, the format of
    qbench/data/reference_curves.toml) and the folder holding them."""
    store = tmp_path / "curves"
    store.mkdir(exist_ok=True)
    lines = ['commit = "test"', 'url = "unused/{commit}/{file}"']
    for name, (bpp, psnr) in curves.items():
        digest = curve_file(store, name.replace("/", "_"), bpp, psnr)
        lines += [
            f'[curves."{name}"]',
            f'file = "{name.replace("/", "_")}.json"',
            f'sha256 = "{digest}"',
            f'dataset = "{dataset}"',
            'psnr = "float"',
            'description = "made by the test"',
        ]
    cat = tmp_path / "catalogue.toml"
    cat.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv(reference.CATALOGUE_ENV, str(cat))
    monkeypatch.setenv(reference.ENV, str(store))
    return store


def test_the_shipped_catalogue_is_complete():
    settings, curves = reference.catalogue()
    assert len(settings["commit"]) == 40 and "{file}" in settings["url"]
    for name in ("compressai/bmshj2018-hyperprior", "compressai/mbt2018", "vtm", "bpg", "jpeg"):
        assert name in curves
    for src in curves.values():
        assert len(src.sha256) == 64 and src.psnr in ("float", "8bit") and src.dataset == "kodak"


def test_unknown_curve_in_a_matrix_names_the_key_and_the_closest(tmp_path, registry):
    p = tiny(tmp_path)
    p.write_text(p.read_text() + '\n[report]\nreference_curves = ["compresai/mbt2018-mean"]\n')
    with pytest.raises(MatrixError) as info:
        load_matrix(p, registry)
    msg = str(info.value)
    assert "report.reference_curves[0]" in msg and "did you mean 'compressai/mbt2018-mean'" in msg


def test_download_from_a_mirror_checks_the_sha256(tmp_path, monkeypatch):
    store = own_catalogue(tmp_path, monkeypatch, {"lab/model": ([0.1, 0.2], [28.0, 30.0])})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "lab_model.json").write_bytes((store / "lab_model.json").read_bytes())
    target = tmp_path / "cache"
    lines = []
    (path,) = reference.download(None, target, f"file://{mirror}/{{file}}", echo=lines.append)
    assert path == target / "lab_model.json" and lines == [f"fetched lab/model -> {path}"]
    curve = reference.load("lab/model", target)
    assert curve.bpp == (0.1, 0.2) and curve.psnr == (28.0, 30.0)
    # there with the right checksum: kept, the (unreachable) URL is not opened
    assert reference.download(None, target, "http://127.0.0.1:9/{file}", lines.append) == [path]
    assert len(lines) == 1
    # a mirror serving other bytes is refused and nothing is kept
    (mirror / "lab_model.json").write_text("{}")
    path.unlink()
    with pytest.raises(QbenchError, match="has SHA-256 .* expected"):
        reference.download(None, target, f"file://{mirror}/{{file}}")
    assert not path.exists()
    with pytest.raises(QbenchError, match=r"is missing; fetch it with `qbench reference-curves"):
        reference.load("lab/model", target)


def test_an_unreachable_download_says_the_mirror_the_folder_and_the_command(
    tmp_path, monkeypatch, registry
):
    """No network: the error names the URL, the folder to copy the file into by hand, the
    ``--url 'file:///PATH/{commit}/...'`` mirror form and the exact command; a missing
    curve in ``load`` and the warning before a run give the same route."""
    from qbench.plan.preflight import report_warnings

    settings, curves = reference.catalogue()
    src, commit = curves["vtm"], settings["commit"]
    monkeypatch.setenv(reference.ENV, str(tmp_path / "curves"))
    with pytest.raises(FetchError) as info:
        reference.download(["vtm"], url="http://127.0.0.1:9/{commit}/{file}")
    msg = str(info.value)
    assert msg.startswith(
        f"reference curve 'vtm': cannot fetch http://127.0.0.1:9/{commit}/{src.file} "
        "(Connection refused)"
    )
    assert (
        f"copy {src.file} into {tmp_path / 'curves'}" in msg and "$QBENCH_REFERENCE_CURVES" in msg
    )
    assert f"https://github.com/InterDigitalInc/CompressAI at commit {commit}" in msg
    assert (
        "`qbench reference-curves --download vtm --url "
        "'file:///PATH/{commit}/results/image/kodak/{file}'` with that copy in "
        f"/PATH/{commit}"
    ) in msg
    upstream = settings["url"].format(commit=commit, file=src.file)
    assert f"`curl -fL --create-dirs -o {tmp_path / 'curves' / src.file} {upstream}`" in msg
    assert not (tmp_path / "curves" / src.file).exists()
    # the same route from load() and from the warnings before a run
    with pytest.raises(QbenchError) as missing:
        reference.load("vtm")
    route = reference.offline_route(["vtm"])
    assert str(missing.value).endswith(route) and "file:///PATH/{commit}/" in route
    p = tiny(tmp_path)
    p.write_text(p.read_text() + '\n[report]\nreference_curves = ["vtm"]\n')
    (warning,) = [w for w in report_warnings(load_matrix(p, registry)) if "vtm" in w]
    assert warning.endswith(route)
    # the mirror form works: a copy of the repository in /PATH/<commit> (a test catalogue's)
    own = own_catalogue(tmp_path, monkeypatch, {"lab/model": ([0.1, 0.2], [28.0, 30.0])})
    copy = tmp_path / "copy" / "test" / "results" / "image" / "kodak"
    copy.mkdir(parents=True)
    (copy / "lab_model.json").write_bytes((own / "lab_model.json").read_bytes())
    mirror = f"file://{tmp_path / 'copy'}/{{commit}}/results/image/kodak/{{file}}"
    reference.download(["lab/model"], tmp_path / "fresh", mirror, echo=lambda _: None)
    assert reference.load("lab/model", tmp_path / "fresh").bpp == (0.1, 0.2)


def test_bd_rate_against_a_published_curve():
    """A run whose files need 10 % more bits than the published curve at every PSNR reads
    +10 %: the published rates are file sizes, so the run's real bitstream is compared
    (its likelihood estimate, 5 % above the published here, only when asked)."""
    psnr = [26.0, 28.0, 30.0, 32.0]
    published = reference.ReferenceCurve(
        reference.Source("lab/x", "x.json", "0" * 64, "kodak", "float", "test"),
        "x (published)",
        (0.1, 0.2, 0.4, 0.8),
        tuple(psnr),
    )
    ok = pd.DataFrame(
        {
            "backbone": "b",
            "dataset": "kodak",
            "quantizer": "noise",
            "seed": 0,
            "bpp": [1.05 * b for b in published.bpp],
            "bpp_bitstream": [1.1 * b for b in published.bpp],
            "psnr": psnr,
        }
    )
    notes: list[str] = []
    (row,) = reference_rows(ok, {"kodak": [published]}, notes)
    assert row["published"] == "lab/x" and row["psnr"] == "float" and row["rate"] == "bitstream"
    assert row["bd_rate_%"] == pytest.approx(10.0, abs=1e-6) and row["overlap_%"] == 100.0
    assert not notes
    (row,) = reference_rows(ok, {"kodak": [published]}, notes, rate="likelihood")
    assert row["bd_rate_%"] == pytest.approx(5.0, abs=1e-6) and row["rate"] == "likelihood"
    # a run that measured no bitstream: the likelihood, and the notes say so
    (row,) = reference_rows(ok.drop(columns=["bpp_bitstream"]), {"kodak": [published]}, notes)
    assert row["bd_rate_%"] == pytest.approx(5.0, abs=1e-6) and row["rate"] == "likelihood"
    assert len(notes) == 1 and "no bpp_bitstream value" in notes[0]


def test_report_draws_the_curves_and_says_what_it_could_not_compute(
    tmp_path, monkeypatch, registry
):
    from qbench.report import write_report
    from qbench.run.runner import run_matrix

    own_catalogue(tmp_path, monkeypatch, {"lab/ref": ([0.1, 0.3, 0.6, 1.0], [22, 25, 28, 31])})
    p = tiny(tmp_path, steps=2)
    p.write_text(p.read_text() + '\n[report]\nreference_curves = ["lab/ref", "lab/ref"]\n')
    m = load_matrix(p, registry)
    run_matrix(
        m, tmp_path / "run", workers=0, device="cpu", show_progress=False, echo=lambda *_: None
    )
    report = write_report(tmp_path / "run")
    text = (tmp_path / "run" / "report.md").read_text()
    assert "fewer than 4" in text or "not computed" in text
    assert any("vs lab/ref" in n for n in report.notes), report.notes
    assert (tmp_path / "run" / "rd_bmshj2018-factorized_embedded.png").exists()


def kodak_folder(tmp_path, registry):
    folder = tmp_path / "kodak"
    folder.mkdir()
    ds = registry.build("dataset", "embedded", split="eval")
    for i in range(2):
        Image.fromarray(ds.uint8(i).permute(1, 2, 0).numpy()).save(folder / f"kodim0{i + 1}.png")
    return folder


def test_verify_zoo_compares_with_the_published_points(tmp_path, monkeypatch, registry):
    """CompressAI's loader on a locally made cache file; the published point is what the
    model gives (ok), then a point it does not give (FAIL, with the reason)."""
    from qbench.cli import verify_zoo
    from qbench.run.evaluate import evaluate

    zoo_cache(tmp_path, monkeypatch, "bmshj2018-factorized", 1)
    kodak = registry.build("dataset", "kodak", path=str(kodak_folder(tmp_path, registry)))
    model = registry.build("backbone", "bmshj2018-factorized", pretrained=1)
    import qbench

    model.set_quantizers({k: qbench.Quantizer() for k in model.latents})
    metrics = [registry.build("metric", m) for m in ("bpp_bitstream", "psnr")]
    avg, _ = evaluate(model, [kodak[i] for i in range(2)], kodak.names, metrics)
    bpp, psnr = avg["bpp_bitstream"], avg["psnr"]
    own_catalogue(
        tmp_path,
        monkeypatch,
        {"compressai/bmshj2018-factorized": ([bpp, 2 * bpp], [psnr, psnr + 3])},
        dataset="kodak",
    )
    lines: list[str] = []
    (check,) = verify_zoo(registry, kodak, ["bmshj2018-factorized"], [1], echo=lines.append)
    assert check.verdict == "ok" and check.bpp == pytest.approx(bpp)
    own_catalogue(
        tmp_path,
        monkeypatch,
        {"compressai/bmshj2018-factorized": ([bpp * 1.05, 2 * bpp], [psnr, psnr + 3])},
        dataset="kodak",
    )
    (check,) = verify_zoo(registry, kodak, ["bmshj2018-factorized"], [1], echo=lines.append)
    assert check.verdict == "FAIL" and "bpp off by" in check.reason
    (check,) = verify_zoo(registry, kodak, ["bmshj2018-factorized"], [3], echo=lines.append)
    assert check.verdict == "skipped" and "qualities 1..2" in check.reason
    with pytest.raises(QbenchError, match="declares no published curve"):
        verify_zoo(registry, kodak, ["nope"], [1])
    torch.manual_seed(0)


def test_verify_zoo_skips_cleanly_without_weights(tmp_path, monkeypatch, registry):
    from qbench.cli import verify_zoo

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    own_catalogue(
        tmp_path,
        monkeypatch,
        {"compressai/bmshj2018-factorized": ([0.1, 0.2], [27.0, 30.0])},
        dataset="kodak",
    )
    kodak = registry.build("dataset", "kodak", path=str(kodak_folder(tmp_path, registry)))
    # no network here: CompressAI's loader cannot fetch the weights, the check is skipped
    monkeypatch.setattr("compressai.zoo.image.load_state_dict_from_url", _offline)
    (check,) = verify_zoo(registry, kodak, ["bmshj2018-factorized"], [1], echo=lambda *_: 0)
    assert check.verdict == "skipped" and "weights not available" in check.reason


def test_verify_zoo_evaluates_on_the_dataset_of_the_published_curves(registry):
    """``qbench verify-zoo`` builds the dataset the catalogue says the curves were measured
    on (no dataset named in the cli)."""
    from qbench.report.zoo import published_dataset

    assert published_dataset(registry) == "kodak"
    assert published_dataset(registry, ["bmshj2018-factorized"]) == "kodak"
    with pytest.raises(QbenchError, match="declares no published curve"):
        published_dataset(registry, ["nope"])


def _offline(url, *args, **kwargs):
    raise OSError(f"no network to fetch {url}")


def test_report_says_when_the_likelihood_is_no_proxy_for_the_bitstream():
    from qbench.report import rate_gaps

    ok = pd.DataFrame(
        {
            "backbone": "b",
            "dataset": "kodak",
            "quantizer": ["stanh", "stanh", "noise", "noise"],
            "bpp": [0.30, 0.50, 0.30, 0.50],
            "bpp_bitstream": [0.35, 0.58, 0.303, 0.51],
        }
    )
    (note,) = rate_gaps(ok)
    assert note.startswith("b, kodak, stanh: the real bitstream is +16.3 % off")
