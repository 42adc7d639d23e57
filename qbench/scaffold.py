"""``qbench new-plugin NAME --kind KIND``: a plugin package that passes conformance as written.

The package has a ``pyproject.toml`` declaring the ``qbench`` entry point, one
documented module with a small working example of the kind (to be replaced by
the author's own code), a matrix that uses it, a README and a test that runs
qbench's conformance suite on it. ``pip install -e PACKAGE`` then
``pytest PACKAGE`` checks it; ``qbench run PACKAGE/matrix.toml`` runs it.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from qbench.registry import QbenchError

KINDS = ("quantizer", "backbone", "dataset", "metric")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "$description"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["qbench"]

[project.optional-dependencies]
test = ["pytest"]

# qbench finds the plugin through this entry point (group `qbench`).
[project.entry-points.qbench]
$name = "$module"

[tool.setuptools]
packages = ["$module"]
"""

README = """\
# $dist

A qbench $kind plugin: $description.

    pip install -e .               # registers `$name` with qbench (see `qbench list`)
    pytest                         # runs qbench's conformance suite on `$name`
    qbench run matrix.toml         # a small benchmark matrix that uses it

Written by `qbench new-plugin $name --kind $kind`; replace the example in
`$module/__init__.py` with your own $kind and keep the conformance test green.
"""

TEST = '''\
"""Run qbench's conformance suite on `$name` (the contract every $kind must keep)."""

import subprocess
import sys


def test_conformance(tmp_path):
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
            "--qbench-conformance", "--qbench-$kind", "$name",
        ],
        cwd=tmp_path,  # collect the conformance items only
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
'''

MATRIX = {
    "quantizer": """\
name = "$name"

[matrix]
backbones  = [{ name = "bmshj2018-factorized", N = 32, M = 48 }]
quantizers = ["noise", "$name"]
lambdas    = [0.001, 0.01]
datasets   = [{ name = "embedded", split = "eval" }]

[train]
dataset = { name = "embedded", split = "train" }
steps = 200
crop = 64
lr = 1e-3

[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
""",
    "backbone": """\
name = "$name"

[matrix]
backbones  = [{ name = "$name", N = 32, M = 48 }]
quantizers = ["noise", "ste"]
lambdas    = [0.001, 0.01]
datasets   = [{ name = "embedded", split = "eval" }]

[train]
dataset = { name = "embedded", split = "train" }
steps = 200
crop = 64
lr = 1e-3

[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
""",
    "dataset": """\
name = "$name"

[matrix]
backbones  = [{ name = "bmshj2018-factorized", N = 32, M = 48 }]
quantizers = ["noise"]
lambdas    = [0.001, 0.01]
datasets   = ["$name"]

[train]
dataset = { name = "$name", count = 8, seed = 1 }
steps = 200
crop = 64
lr = 1e-3

[eval]
metrics = ["bpp", "bpp_bitstream", "psnr"]
""",
    "metric": """\
name = "$name"

[matrix]
backbones  = [{ name = "bmshj2018-factorized", N = 32, M = 48 }]
quantizers = ["noise"]
lambdas    = [0.001, 0.01]
datasets   = [{ name = "embedded", split = "eval" }]

[train]
dataset = { name = "embedded", split = "train" }
steps = 200
crop = 64
lr = 1e-3

[eval]
metrics = ["bpp", "psnr", "$name"]
""",
}

MODULE = {
    "quantizer": '''\
"""`$name`: a qbench quantizer plugin.

The example is additive uniform noise of a configurable width during training,
``y_tilde = y + u``, ``u ~ U(-width/2, width/2)`` (``width = 1`` is the noise
surrogate of Balle, Laparra, Simoncelli, ICLR 2017), and hard rounding around
the means at test time (inherited from ``qbench.Quantizer``). Replace
``forward``'s training branch with your surrogate; override ``quantize``,
``bins``, ``symbols``, ``from_symbols`` and ``tables`` only for a non-uniform
quantizer (see qbench's docs/plugins.md).
"""

import torch

import qbench


class $cls(qbench.Quantizer):
    """Additive uniform noise of width ``width`` in training; rounding in eval."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = float(width)

    def forward(self, y, means=None):
        if not self.training:  # eval: hard rounding around the means
            return super().forward(y, means)
        half = self.width / 2
        y_tilde = y + torch.empty_like(y).uniform_(-half, half)
        return qbench.Quantized(rate=y_tilde, dist=y_tilde)


@qbench.hookimpl
def qbench_register_quantizers(register):
    register("$name", $cls, description="$description")
''',
    "backbone": '''\
"""`$name`: a qbench backbone plugin.

The example is a small factorized-prior codec in the style of Balle et al.,
ICLR 2018: ``g_a`` (four stride-2 convolutions with GDN), CompressAI's
``EntropyBottleneck`` for the latent ``y`` and ``g_s`` mirroring ``g_a``.
Every quantization goes through the plugin quantizer (``quantize_latent`` in
``forward``, ``code_latent`` / ``decode_latent`` for the real bitstream), so
every qbench quantizer, uniform or not, works with it.
"""

from functools import partial

import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import GDN
from torch import nn

import qbench
from qbench.coding import BottleneckTables
from qbench.likelihoods import bottleneck_likelihood


def _down(cin, cout):
    return nn.Conv2d(cin, cout, 5, stride=2, padding=2)


def _up(cin, cout):
    return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)


class $cls(qbench.Backbone):
    """Factorized prior with ``N`` hidden and ``M`` latent channels; latent ``y``."""

    latents = ("y",)
    multiple = 16

    def __init__(self, N: int = 64, M: int = 96) -> None:
        super().__init__()
        self.g_a = nn.Sequential(
            _down(3, N), GDN(N), _down(N, N), GDN(N), _down(N, N), GDN(N), _down(N, M)
        )
        self.g_s = nn.Sequential(
            _up(M, N), GDN(N, inverse=True), _up(N, N), GDN(N, inverse=True),
            _up(N, N), GDN(N, inverse=True), _up(N, 3),
        )
        self.entropy_bottleneck = EntropyBottleneck(M)

    # the parts qbench's training loop and statistics use
    def aux_parameters(self):
        return (p for n, p in self.named_parameters() if n.endswith("quantiles"))

    def aux_loss(self):
        return self.entropy_bottleneck.loss()

    def analysis_parameters(self):
        return self.g_a.parameters()

    def analysis(self, x):
        return self.g_a(x)

    def update(self, force=True):
        self.entropy_bottleneck.update(force=force)

    def _medians(self, channels):
        return self.entropy_bottleneck._get_medians().detach().reshape(1, channels, 1, 1)

    def _indexes(self, shape):
        return torch.arange(shape[1]).view(1, -1, 1, 1).expand(*shape)

    # the codec
    def forward(self, x):
        y = self.g_a(x)
        likelihood = partial(bottleneck_likelihood, self.entropy_bottleneck)
        y_hat, y_lik = self.quantize_latent("y", y, self._medians(y.shape[1]), likelihood)
        return {"x_hat": self.g_s(y_hat), "likelihoods": {"y": y_lik}, "latents": {"y": y_hat}}

    def compress(self, x):
        y = self.g_a(x)
        tables = BottleneckTables(self.entropy_bottleneck)
        strings, y_hat = self.code_latent(
            "y", y, self._medians(y.shape[1]), tables, self._indexes(y.shape)
        )
        return {"strings": [strings], "shape": y.shape[-2:], "latents": {"y": y_hat}}

    def decompress(self, strings, shape):
        channels = self.entropy_bottleneck._get_medians().shape[0]
        size = (len(strings[0]), channels, *shape)
        tables = BottleneckTables(self.entropy_bottleneck)
        y_hat = self.decode_latent(
            "y", strings[0], self._medians(channels), tables, self._indexes(size)
        )
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1), "latents": {"y": y_hat}}


@qbench.hookimpl
def qbench_register_backbones(register):
    register("$name", $cls, description="$description")
''',
    "dataset": '''\
"""`$name`: a qbench dataset plugin.

The example makes ``count`` smooth synthetic photographs (sums of random
oriented sinusoids, per channel, plus mild noise) of ``size x size`` pixels,
reproducibly from ``seed``, so it needs no download. A dataset of files
returns ``qbench.ImageDataset(paths, description=...)`` instead, which reads
every image format Pillow knows and skips unreadable files by name.
"""

import math

import torch

import qbench


def $func(count: int = 4, size: int = 192, seed: int = 0) -> qbench.ImageDataset:
    """``count`` synthetic ``size x size`` RGB images, the same for the same ``seed``."""
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got {count}, {size}")
    gen = torch.Generator().manual_seed(seed)
    coords = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    images, names = [], []
    for i in range(count):
        img = torch.zeros(3, size, size)
        for _ in range(6):
            angle = float(torch.rand(1, generator=gen)) * math.pi
            freq = 1 + float(torch.rand(1, generator=gen)) * 12
            phase = float(torch.rand(1, generator=gen)) * 2 * math.pi
            wave = torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)
            img += torch.rand(3, 1, 1, generator=gen) * wave
        img += 0.05 * torch.randn(3, size, size, generator=gen)
        img = (img - img.min()) / (img.max() - img.min())
        images.append((img * 255).round().to(torch.uint8))
        names.append(f"$name-{i:03d}.png")
    return qbench.ImageDataset.from_tensors(images, names, description="$name (synthetic)")


@qbench.hookimpl
def qbench_register_datasets(register):
    register("$name", $func, description="$description")
''',
    "metric": '''\
"""`$name`: a qbench metric plugin.

The example is PSNR on luma: ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R
BT.601), ``PSNR_Y = 10 log10(1 / MSE(Y, Y_hat))`` in dB per image, averaged
over the images (the mean is qbench's default reduction; declare another in
``aggregate``).
"""

import torch

import qbench
from qbench import rd

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def luma(x):
    """BT.601 luma of ``N x 3 x H x W`` RGB in [0, 1]."""
    return (x.clamp(0, 1) * _LUMA.to(x)).sum(1, keepdim=True)


class $cls(qbench.Metric):
    """PSNR of the luma channel of the eval-mode reconstruction (dB)."""

    columns = ("$column",)

    def per_image(self, ev):
        return {"$column": rd.psnr(luma(ev.x), luma(ev.x_hat))}


@qbench.hookimpl
def qbench_register_metrics(register):
    register("$name", $cls, description="$description")
''',
}

DESCRIPTION = {
    "quantizer": "additive uniform noise of configurable width (example)",
    "backbone": "small factorized-prior codec (example)",
    "dataset": "synthetic smooth images (example)",
    "metric": "PSNR of the luma channel, BT.601 (example)",
}


def write_plugin(name: str, kind: str, out: str | Path | None = None) -> Path:
    """Write the plugin package for ``name`` of ``kind`` and return its folder."""
    if kind not in KINDS:
        raise QbenchError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise QbenchError(
            f"plugin name {name!r}: use lower-case letters, digits, '-' and '_', "
            "starting with a letter"
        )
    ident = name.replace("-", "_")
    if keyword.iskeyword(ident):
        raise QbenchError(f"plugin name {name!r} is a Python keyword")
    root = Path(out) if out else Path(f"qbench-{name}")
    if root.exists() and any(root.iterdir()):
        raise QbenchError(f"{root} exists and is not empty; choose another --out")
    module = f"qbench_{ident}"
    words = {
        "name": name,
        "kind": kind,
        "dist": f"qbench-{name}",
        "module": module,
        "cls": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
        "func": ident,
        "column": ident,
        "description": DESCRIPTION[kind],
    }
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        "matrix.toml": MATRIX[kind],
        f"{module}/__init__.py": MODULE[kind],
        f"tests/test_{ident}_conformance.py": TEST,
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(text).substitute(words), encoding="utf-8")
    return root
