"""Hardening against hostile or odd inputs: zoo weights that would run code, a reference
catalogue naming files outside its folder, images far larger than their files, and
special files (FIFOs, devices) in a dataset folder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

# -- zoo weights: hash-checked, weights_only ------------------------------------------


class _Payload:
    """Unpickling this creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch hub's folder in tmp_path (``torch.hub.set_dir``; put back afterwards)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)
    torch.hub.set_dir(str(tmp_path / "hub"))
    return tmp_path / "hub"


def _zoo_name(quality: int = 1) -> str:
    from compressai.zoo.image import model_urls

    return model_urls["bmshj2018-factorized"]["mse"][quality].rsplit("/", 1)[1]


def _named_by_its_hash(src: Path, folder: Path, stem: str) -> Path:
    """``src`` moved into ``folder`` as ``<stem>-<first 8 hex of its SHA-256>.pth.tar``."""
    prefix = hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    folder.mkdir(parents=True, exist_ok=True)
    return Path(src.replace(folder / f"{stem}-{prefix}.pth.tar"))


def test_a_malicious_pickle_at_the_zoo_cache_path_is_refused_by_its_hash(hub, tmp_path, registry):
    from qbench_plugins.compressai_backbones import CheckpointError

    marker = tmp_path / "pwned"
    path = hub / "checkpoints" / _zoo_name(1)
    path.parent.mkdir(parents=True)
    torch.save({"g_a.0.weight": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        registry.build("backbone", "bmshj2018-factorized", pretrained=1)
    assert not marker.exists()
    msg = str(info.value)
    assert msg.startswith(f"pretrained = 1 (bmshj2018-factorized): {path} has SHA-256 ")
    assert "its name says 446d5c7f" in msg and "not loaded" in msg
    assert path.exists()  # a file qbench did not put there is left as it is


def test_a_malicious_pickle_with_a_matching_hash_is_refused_by_weights_only(
    hub, tmp_path, monkeypatch, registry
):
    from compressai.zoo.image import model_urls
    from qbench_plugins.compressai_backbones import CheckpointError

    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pth.tar"
    torch.save({"g_a.0.weight": _Payload(marker)}, raw)
    path = _named_by_its_hash(raw, hub / "checkpoints", "bmshj2018-factorized-prior-1")
    url = f"https://example.invalid/{path.name}"  # never reached: the file is in the cache
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], 1, url)
    with pytest.raises(CheckpointError, match=r"cannot load weights \(UnpicklingError"):
        registry.build("backbone", "bmshj2018-factorized", pretrained=1)
    assert not marker.exists()


def test_zoo_weights_with_their_published_hash_load_from_a_mirror(
    hub, tmp_path, monkeypatch, registry
):
    """A real (tiny) FactorizedPrior's weights, served by a file:// mirror under a name
    carrying their SHA-256 prefix: fetched into torch hub's cache, checked, loaded."""
    from compressai.models import FactorizedPrior
    from compressai.zoo.image import model_urls
    from qbench_plugins.compressai_backbones import CheckpointError

    torch.manual_seed(5)
    ref = FactorizedPrior(8, 12)
    raw = tmp_path / "weights.pth.tar"
    torch.save(ref.state_dict(), raw)
    mirror = _named_by_its_hash(raw, tmp_path / "mirror", "bmshj2018-factorized-prior-1")
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], 1, mirror.as_uri())
    model = registry.build("backbone", "bmshj2018-factorized", pretrained=1)
    assert (model.net.N, model.net.M) == (8, 12)
    assert torch.equal(model.net.g_a[0].weight, ref.g_a[0].weight)
    assert (hub / "checkpoints" / mirror.name).read_bytes() == mirror.read_bytes()
    # a download whose hash is not the one its name carries is refused and not kept
    wrong = tmp_path / "mirror" / "bmshj2018-factorized-prior-2-00000000.pth.tar"
    wrong.write_bytes(mirror.read_bytes())
    monkeypatch.setitem(model_urls["bmshj2018-factorized"]["mse"], 2, wrong.as_uri())
    with pytest.raises(CheckpointError, match="the download was not kept"):
        registry.build("backbone", "bmshj2018-factorized", pretrained=2)
    assert not (hub / "checkpoints" / wrong.name).exists()


# -- reference catalogue: file names stay inside the curves' folder --------------------


@pytest.mark.parametrize("name", ["../../escaped.json", "ABS/escaped.json", "sub/x.json", ".."])
def test_a_catalogue_file_outside_the_folder_is_refused(tmp_path, monkeypatch, name):
    """``qbench reference-curves --download`` with a catalogue entry whose file leaves
    ``--dir``: refused in one line naming the catalogue and the entry; nothing written."""
    from .test_cli import cli

    name = name.replace("ABS", str(tmp_path / "abs"))  # an absolute path
    body = b'{"name": "x", "results": {"bpp": [0.1, 0.2], "psnr-rgb": [28.0, 30.0]}}'
    source = tmp_path / "escaped.json"  # where the file:// mirror's ../../ lands
    source.write_bytes(body)
    (tmp_path / "m" / "x").mkdir(parents=True)
    cat = tmp_path / "catalogue.toml"
    cat.write_text(
        textwrap.dedent(
            f"""\
            commit = "c"
            url = "unused/{{commit}}/{{file}}"
            [curves.evil]
            file = "{name}"
            sha256 = "{hashlib.sha256(body).hexdigest()}"
            dataset = "kodak"
            psnr = "float"
            description = "made by the test"
            """
        )
    )
    monkeypatch.setenv("QBENCH_REFERENCE_CATALOGUE", str(cat))
    store = tmp_path / "a" / "b" / "store"
    mirror = f"file://{tmp_path}/m/x/{{file}}"
    before = sorted(p for p in tmp_path.rglob("*"))
    r = cli("reference-curves", "--download", "evil", "--dir", str(store), "--url", mirror)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert line.startswith(f"qbench: error: $QBENCH_REFERENCE_CATALOGUE ({cat}): ")
    assert f"curves.'evil'.file = {name!r}: must be a plain file name" in line
    assert sorted(p for p in tmp_path.rglob("*")) == before


# -- images: regular files only, pixel limit from the header ---------------------------

DATA = Path(__file__).resolve().parents[1] / "qbench" / "data" / "images"

MATRIX = """
name = "inputs"
[matrix]
backbones = [{{ name = "bmshj2018-factorized", N = 16, M = 16 }}]
quantizers = ["noise"]
lambdas = [0.01]
datasets = [{{ name = "folder", path = "{folder}" }}]
[train]
steps = 2
batch_size = 2
crop = 64
dataset = {{ name = "folder", path = "{folder}" }}
[eval]
metrics = ["bpp", "psnr"]
{eval}
"""


def _matrix(tmp_path: Path, folder: Path, eval: str = "") -> Path:
    p = tmp_path / "m.toml"
    p.write_text(MATRIX.format(folder=folder, eval=eval))
    return p


def _folder_with_a_real_image(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    real = sorted(p for p in DATA.rglob("*.png"))[0]
    (folder / "real.png").write_bytes(real.read_bytes())
    return folder


def _validate(matrix: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qbench.cli", "validate", str(matrix)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=matrix.parent,
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_and_a_link_to_dev_zero_named_png_are_skipped_and_named(tmp_path):
    """``validate`` ends (it used to hang fingerprinting them) and names both."""
    folder = _folder_with_a_real_image(tmp_path)
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    try:
        out = _validate(_matrix(tmp_path, folder), timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("qbench validate hung on a FIFO or a link to /dev/zero")
    assert out.returncode == 0, out.stderr
    said = out.stdout + out.stderr
    assert f"{folder / 'pipe.png'}: not a regular file (a FIFO); not read" in said
    assert f"{folder / 'zero.png'}: not a regular file (a character device); not read" in said


def test_special_files_do_not_count_in_a_folder_s_fingerprint(tmp_path):
    from qbench.images import ImageDataset, list_images
    from qbench.plan.jobs import fingerprint

    def fingerprint_apart(folder: Path) -> str:  # in a process of its own: a hang fails
        code = "import sys; from qbench.plan.jobs import fingerprint as f; print(f(sys.argv[1]))"
        try:
            out = subprocess.run(
                [sys.executable, "-c", code, str(folder)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            pytest.fail("fingerprint hung on a link to /dev/zero")
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    folder = _folder_with_a_real_image(tmp_path)
    before = fingerprint(folder)
    (folder / "zero.png").symlink_to("/dev/zero")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere")
    assert fingerprint_apart(folder) == before
    ds = ImageDataset(list_images(folder), root=folder)
    assert ds.names == ["real.png"]
    assert [Path(p).name for p, _ in ds.skipped] == ["gone.png", "zero.png"]
    assert "cannot open (No such file or directory)" in ds.skipped[0][1]


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A real 100-megapixel PNG of one colour (a few hundred KB on disk)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("RGB", (10_000, 10_000), (90, 120, 200)).save(path)
    return path


def _validate_peak_mb(matrix: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``qbench validate matrix`` in a process of its own; its peak RSS in MB."""
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)\n"
        "sys.stderr.write(r.stdout + r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "qbench.cli", "validate", str(matrix)],
        capture_output=True,
        text=True,
        timeout=320,
        cwd=matrix.parent,
    )
    return out, int(out.stdout.strip() or 0) / 1024


def test_a_100_megapixel_png_is_refused_from_its_header_and_validate_stays_small(
    tmp_path, huge_png
):
    """The file is ~300 KB; decoded it would be 300 MB of pixels (and several times that
    while converting). ``validate`` skips it by its header and names it: its peak memory
    is that of the same matrix without the image (measured: about 1.2 GB both, the
    imports and the models; 2.6 GB with the image decoded)."""
    assert huge_png.stat().st_size < 2_000_000
    folder = _folder_with_a_real_image(tmp_path)
    base, base_mb = _validate_peak_mb(_matrix(tmp_path, folder))
    assert base.returncode == 0, base.stderr
    (folder / "huge.png").write_bytes(huge_png.read_bytes())
    out, peak_mb = _validate_peak_mb(_matrix(tmp_path, folder))
    assert out.returncode == 0, out.stderr
    print(f"qbench validate peak RSS: {base_mb:.0f} MB, {peak_mb:.0f} MB with a 100 MP PNG")
    assert peak_mb < 1500 and peak_mb - base_mb < 150, (base_mb, peak_mb)
    assert f"{folder / 'huge.png'}: 10000x10000 is 100.0 MP, more than the 89.5 MP" in out.stderr


def test_an_image_above_the_limit_is_refused_before_decoding(huge_png, tmp_path):
    from qbench.images import BadImageError, ImageDataset, image_header, load_image_u8

    for read in (image_header, load_image_u8):
        with pytest.raises(BadImageError, match=r"huge\.png: 10000x10000 is 100\.0 MP"):
            read(huge_png)
    folder = _folder_with_a_real_image(tmp_path)
    ds = ImageDataset([huge_png, folder / "real.png"])
    assert ds.names == ["real.png"] and "PIL.Image.MAX_IMAGE_PIXELS" in ds.skipped[0][1]


def test_an_image_over_max_pixels_is_left_out_without_being_decoded(tmp_path):
    """``select_images`` reads sizes from the headers: the large image's file can even be
    gone by then, it is never opened again."""
    from qbench.images import BadImageError, ImageDataset
    from qbench.plan.configs import EvalConfig
    from qbench.run.evaluate import select_images

    folder = _folder_with_a_real_image(tmp_path)
    Image.new("RGB", (3000, 2000), (10, 20, 30)).save(folder / "large.png")
    ds = ImageDataset([folder / "large.png", folder / "real.png"], root=folder)
    (folder / "large.png").unlink()
    idx, skipped = select_images(ds, EvalConfig(metrics=("psnr",), max_images=0, max_pixels=10**6))
    assert idx == [1]
    assert skipped == [
        "large.png: 3000x2000 is 6.0 MP, more than [eval] max_pixels = 1000000 (1.0 MP)"
    ]
    assert ds.uint8(1).shape[0] == 3
    with pytest.raises(BadImageError, match="large.png: cannot open"):
        ds.uint8(0)


def test_max_pixels_below_every_evaluation_image_is_a_preflight_error(tmp_path):
    from .test_cli import cli

    folder = _folder_with_a_real_image(tmp_path)
    out = cli("validate", str(_matrix(tmp_path, folder, eval="max_pixels = 100")))
    assert out.returncode == 2, (out.stdout, out.stderr)
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("qbench: error: ")
    assert "eval.max_pixels: 100 (0.0 MP) is below every image of dataset" in line
