"""Datasets: image modes become RGB, bad files are reported, odd sizes pass evaluation."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qbench.images import BadImageError, DatasetError, load_image

from .conftest import KODAK, needs_kodak


def save(path, arr, mode=None, **kw):
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path, **kw)
    return path


@pytest.fixture
def odd_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    save(d / "rgb.png", rng.integers(0, 256, (498, 621, 3), dtype=np.uint8))
    save(d / "gray.png", rng.integers(0, 256, (40, 50), dtype=np.uint8))
    save(d / "sub" / "g16.png", (rng.integers(0, 65536, (30, 20))).astype(np.uint16))
    pal = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).convert("P")
    pal.save(d / "palette.png")
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    save(d / "rgba.png", rgba)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).convert("CMYK").save(
        d / "cmyk.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / "x.webp")
    good = (d / "rgb.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    (d / "notanimage.jpg").write_bytes(b"hello")
    return d


def test_modes_become_rgb_floats(odd_folder):
    for name in ("gray.png", "sub/g16.png", "palette.png", "rgba.png", "cmyk.jpg", "x.webp"):
        x = load_image(odd_folder / name)
        assert x.dtype == torch.float32 and x.shape[0] == 3
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    g = load_image(odd_folder / "gray.png")
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    g16 = load_image(odd_folder / "sub" / "g16.png")
    assert float(g16.max()) > 0.9  # 16-bit range scaled, not clipped to 255/65535


def test_folder_skips_bad_files_by_path(registry, odd_folder):
    ds = registry.build("dataset", "folder", path=str(odd_folder))  # shown once by the run
    skipped = {p.split("/")[-1] for p, _ in ds.skipped}
    assert skipped == {"truncated.png", "notanimage.jpg"}
    assert len(ds) == 7 and "sub/g16.png" in ds.names  # named relative to the folder
    with pytest.raises(BadImageError, match="notanimage.jpg"):
        load_image(odd_folder / "notanimage.jpg")


def test_missing_or_empty_folder(registry, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        registry.build("dataset", "folder", path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image"):
        registry.build("dataset", "folder", path=str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="no readable image"):
        registry.build("dataset", "folder", path=str(tmp_path / "bad"))


def test_embedded_sets(registry):
    train = registry.build("dataset", "embedded", split="train")
    ev = registry.build("dataset", "embedded", split="eval")
    assert len(train) >= 3 and len(ev) >= 3
    assert not set(train.names) & set(ev.names)
    assert all(x.shape[0] == 3 for x in ev)


def test_odd_size_evaluates_by_pad_and_crop(registry, odd_folder):
    from qbench.run.evaluate import evaluate_image

    torch.manual_seed(0)
    m = registry.build("backbone", "bmshj2018-hyperprior", N=16, M=16)
    m.set_quantizers({k: registry.build("quantizer", "noise") for k in m.latents})
    m.eval()
    m.update(force=True)
    x = load_image(odd_folder / "rgb.png")
    assert x.shape[-2:] == (498, 621)
    ev = evaluate_image(m, x, "rgb.png")
    assert ev.x_hat.shape == (1, 3, 498, 621)
    assert ev.x_padded.shape[-2:] == (512, 640)
    assert ev.bitexact and ev.num_pixels == 498 * 621


def test_kodak_download_verifies_checksums(tmp_path, monkeypatch):
    import qbench_plugins.datasets as dsmod

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    files = {}
    for i in range(2):
        data = bytes([i]) * 100
        (mirror / f"kodim0{i + 1}.png").write_bytes(data)
        files[f"kodim0{i + 1}.png"] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(dsmod, "KODAK_SHA256", files)
    dest = dsmod.download_kodak(tmp_path / "kodak", base_url=mirror.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
    # a corrupted mirror file is rejected and not kept
    (tmp_path / "kodak" / "kodim02.png").unlink()
    (mirror / "kodim02.png").write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        dsmod.download_kodak(tmp_path / "kodak", base_url=mirror.as_uri())
    assert not (tmp_path / "kodak" / "kodim02.png").exists()


def test_kodak_offline_names_the_url_the_folder_and_the_command(tmp_path):
    import qbench_plugins.datasets as dsmod

    from qbench.fetch import FetchError

    dest = tmp_path / "kodak"
    with pytest.raises(DatasetError) as info:
        dsmod.download_kodak(dest, base_url="http://127.0.0.1:9/kodak/")
    msg = str(info.value)
    assert isinstance(info.value, FetchError)
    assert msg.startswith(
        "Kodak kodim01.png: cannot fetch http://127.0.0.1:9/kodak/kodim01.png (Connection refused)"
    )
    assert f"put kodim01.png..kodim24.png (from http://127.0.0.1:9/kodak/) into {dest}" in msg
    assert "path = ... or $QBENCH_KODAK" in msg
    assert (
        f"`for i in $(seq -w 1 24); do curl -fL --create-dirs -o {dest}/kodim$i.png "
        "http://127.0.0.1:9/kodak/kodim$i.png; done`"
    ) in msg
    assert not list(dest.iterdir())
    # the published location by default
    assert dsmod.KODAK_URL in dsmod.kodak_offline(dest).place


@needs_kodak
def test_kodak_from_local_folder(registry):
    import qbench_plugins.datasets as dsmod

    ds = registry.build("dataset", "kodak", path=str(KODAK))
    assert len(ds) == 24 and ds.names[0] == "kodim01.png"
    assert {tuple(x.shape[-2:]) for x in ds} == {(512, 768), (768, 512)}
    # the shared copy is the published one: checksums verify without a download
    for name, digest in list(dsmod.KODAK_SHA256.items())[:3]:
        assert hashlib.sha256((KODAK / name).read_bytes()).hexdigest() == digest


def _zip_of_pngs(path, names, size=8):
    import zipfile

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for n in names:
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
            z.writestr(n, buf.getvalue())
        z.writestr("README.txt", "not an image")
    return path


def test_tecnick_downloads_from_a_mirror_and_names_missing_images(tmp_path, monkeypatch, registry):
    import qbench_plugins.datasets as d

    members = [f"testimages/RGB/RGB_OR_1200x1200/{n}" for n in d.TECNICK_NAMES]
    monkeypatch.setattr(d, "TECNICK_MEMBERS", "testimages/RGB/RGB_OR_1200x1200/")
    mirror = _zip_of_pngs(tmp_path / "testimages.zip", members + ["testimages/RGB/other/x.png"])
    monkeypatch.setattr(d, "TECNICK_URL", mirror.as_uri())
    ds = registry.build("dataset", "tecnick", path=str(tmp_path / "tecnick"), download=True)
    assert len(ds) == 100 and ds.names[0] == "RGB_OR_1200x1200_001.png" and not ds.skipped
    assert not (tmp_path / "tecnick" / "x.png").exists(), "only the 1200x1200 folder is unpacked"
    for n in ("RGB_OR_1200x1200_007.png", "RGB_OR_1200x1200_100.png"):
        (tmp_path / "tecnick" / n).unlink()
    ds = registry.build("dataset", "tecnick", path=str(tmp_path / "tecnick"))
    assert len(ds) == 98
    assert [Path(p).name for p, _ in ds.skipped] == [
        "RGB_OR_1200x1200_007.png",
        "RGB_OR_1200x1200_100.png",
    ]
    # an archive without the expected images is refused, nothing kept
    bad = _zip_of_pngs(tmp_path / "bad.zip", ["testimages/RGB/RGB_OR_1200x1200/a.png"])
    monkeypatch.setattr(d, "TECNICK_URL", bad.as_uri())
    with pytest.raises(DatasetError, match="lacks 100 expected images"):
        registry.build("dataset", "tecnick", path=str(tmp_path / "t2"), download=True)
    assert not list((tmp_path / "t2").glob("*.png"))


def test_clic_pro_checks_the_published_digest(tmp_path, monkeypatch, registry):
    import hashlib

    import qbench_plugins.datasets as d

    mirror = _zip_of_pngs(tmp_path / "valid.zip", [f"valid/img{i}.png" for i in range(3)])
    sha1 = hashlib.sha1(mirror.read_bytes()).hexdigest()
    monkeypatch.setitem(d.CLIC_PRO, "valid", (mirror.as_uri(), sha1, 41))
    ds = registry.build("dataset", "clic-pro", path=str(tmp_path / "clic"), download=True)
    assert len(ds) == 3
    assert ds.skipped == [(str(tmp_path / "clic"), "clic-pro valid expects 41 images, 3 found")]
    monkeypatch.setitem(d.CLIC_PRO, "valid", (mirror.as_uri(), "0" * 40, 41))
    with pytest.raises(
        DatasetError,
        match=f"checksum mismatch: .* has SHA-1 {sha1}, expected 0{{40}}; the file was not kept",
    ):
        registry.build("dataset", "clic-pro", path=str(tmp_path / "c2"), download=True)
    assert not list((tmp_path / "c2").iterdir())
    with pytest.raises(Exception, match="split must be one of valid, test"):
        registry.build("dataset", "clic-pro", split="train", path=str(tmp_path))


def test_an_archive_offline_says_how_to_unpack_it_by_hand(tmp_path, monkeypatch, registry):
    import shutil
    import subprocess

    import qbench_plugins.datasets as d

    monkeypatch.setattr(d, "TECNICK_URL", "http://127.0.0.1:9/testimages.zip")
    dest = tmp_path / "tecnick"
    with pytest.raises(DatasetError) as info:
        registry.build("dataset", "tecnick", path=str(dest), download=True)
    msg = str(info.value)
    assert msg.startswith(
        f"the archive of {dest}: cannot fetch http://127.0.0.1:9/testimages.zip "
        "(Connection refused)"
    )
    assert f"unpack its PNG images under RGB/RGB_OR_1200x1200/ by hand, flat, into {dest}" in msg
    assert "$QBENCH_TECNICK" in msg and "curl -fL --create-dirs -o tecnick.zip" in msg
    unzip = msg[msg.index("`unzip") + 1 : msg.rindex("`")]
    assert unzip == (
        f"unzip -j -o -C tecnick.zip 'RGB/RGB_OR_1200x1200/*.png' -x '*/._*' -d {dest}"
    )
    # that command, run where the archive was copied, unpacks what download = true would
    if shutil.which("unzip") is None:
        pytest.skip("unzip is not installed here")
    _zip_of_pngs(tmp_path / "tecnick.zip", [f"RGB/RGB_OR_1200x1200/{n}" for n in d.TECNICK_NAMES])
    subprocess.run(unzip, shell=True, cwd=tmp_path, check=True, capture_output=True)  # noqa: S602
    ds = registry.build("dataset", "tecnick", path=str(dest))
    assert len(ds) == 100 and not ds.skipped


def test_kodak_names_the_missing_images(tmp_path, registry):
    folder = tmp_path / "kodak"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(folder / "kodim03.png")
    ds = registry.build("dataset", "kodak", path=str(folder))
    assert len(ds) == 1 and len(ds.skipped) == 23
    assert ds.skipped[0] == (
        str(folder / "kodim01.png"),
        f"missing from {folder} (kodak expects it)",
    )
