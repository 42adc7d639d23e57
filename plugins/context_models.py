"""Backbones with a spatial context model: ``mbt2018``, ``cheng2020-anchor``, ``cheng2020-attn``.

Each adapter wraps CompressAI's own model (``JointAutoregressiveHierarchicalPriors``,
``Cheng2020Anchor``, ``Cheng2020Attention``; not copies): the analysis and
synthesis transforms, the hyperprior, the masked 5x5 context model and the
entropy-parameter network are CompressAI's modules; every quantization of
``y`` and ``z`` goes through the plugin quantizer, every likelihood through its
``bins``, and the bitstream is CompressAI's rANS coder.

How ``y`` is quantized (Minnen, Ballé, Toderici, NeurIPS 2018, Sec. 3; the
serial coding of CompressAI's ``_compress_ar`` / ``_decompress_ar``):

* **training**: the context model sees a surrogate draw of ``y`` taken
  without means (the means are what it predicts); the rate and the synthesis
  see the quantizer applied around the predicted means, ``q(y, mu)``. For
  additive noise this is CompressAI's own training forward (two independent
  noise draws: one for the context and the synthesis there, one for the
  likelihood). Deviation: qbench feeds the synthesis the means-centred draw,
  so that zero-centre options act on what the decoder sees.
* **test** (eval forward, ``compress``, ``decompress``): raster order, one
  position at a time; at each position the context of the values decoded so
  far and the hyperprior give ``(sigma, mu)``, and the quantizer's symbols
  ``q.symbols(y, mu)`` are coded with ``q.tables`` (uniform, a quantization
  step, or STanH's non-uniform cells: the index protocol). The decoder runs
  the same operations on the same values, so the decoded latents equal the
  encoder's bit for bit. The eval forward runs the same loop for the means
  and scales, then quantizes ``y`` itself with them: its latents are the
  decoder's values and its likelihoods those of the cells the coder codes,
  so the likelihood bpp is the bitstream's up to the coder's overhead.
  (Re-quantizing the decoded values instead would be wrong for a quantizer
  whose reconstruction levels lie outside their own decision cells, as
  STanH's learned ones can.) (CompressAI's own eval forward rounds ``y`` without means, which
  its bitstream never does.)

The serial loops run in Python over the latent positions (as CompressAI's
do): fine for Kodak-sized images on CPU, slow on large ones.

Exported with ``qbench export --format compressai`` (the export of
:class:`~qbench_plugins.compressai_backbones.MeanScale`, inherited), CompressAI's
own model codes the same bitstream, since its ``compress``/``decompress`` are these
serial loops; only its eval forward (``eval_model --entropy-estimation``) rounds
``y`` without the means for the context and the synthesis, so its estimated rate
and PSNR are not qbench's ``bpp`` and ``psnr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from compressai.ans import RansDecoder
from compressai.models import (
    Cheng2020Anchor,
    Cheng2020Attention,
    JointAutoregressiveHierarchicalPriors,
)
from qbench_plugins.compressai_backbones import MeanScale
from torch import Tensor

import qbench
from qbench import coding


class JointAutoregressive(MeanScale):
    """``mbt2018``: Minnen, Ballé, Toderici, "Joint Autoregressive and Hierarchical Priors
    for Learned Image Compression", NeurIPS 2018; CompressAI's
    ``JointAutoregressiveHierarchicalPriors(N, M)``. Latents ``y`` (Gaussian with a
    context model) and ``z`` (factorized). See the module docstring."""

    zoo_name = "mbt2018"
    model_class = JointAutoregressiveHierarchicalPriors

    def _new_net(self, N: int, M: int):
        return self.model_class(N, M)

    def capabilities(self, latent: str) -> frozenset[str]:
        # y is coded position by position (the decoder's raster loop): no whole-tensor dither
        caps = super().capabilities(latent)
        return caps - {"dithered_coding"} if latent == "y" else caps

    # -- the context model -------------------------------------------------------
    @property
    def _kernel(self) -> tuple[int, int]:
        cp = self.net.context_prediction
        return cp.kernel_size[0], cp.padding[0]

    def _gaussian_params(self, params: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        scales, means = self.net.entropy_parameters(torch.cat((params, ctx), dim=1)).chunk(2, 1)
        return scales, means

    def _serial(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(y_hat, scales, means)``: ``y`` quantized in raster order, each position
        around the means its decoded neighbours predict (the encoder's loop).

        One image at a time, as the decoder runs: a convolution over a batch may sum
        in another order than over one image, and the means must be the decoder's
        to the last bit."""
        parts = [self._serial_one(y[n : n + 1], params[n : n + 1]) for n in range(y.shape[0])]
        return tuple(torch.cat(t) for t in zip(*parts))

    def _serial_one(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.quantizers["y"]
        k, p = self._kernel
        cp = self.net.context_prediction
        weight = cp.weight * cp.mask
        n, c, h, w = y.shape
        y_hat = F.pad(torch.zeros_like(y), (p, p, p, p))
        scales = torch.zeros_like(y)
        means = torch.zeros_like(y)
        for i in range(h):
            for j in range(w):
                ctx = F.conv2d(y_hat[:, :, i : i + k, j : j + k], weight, bias=cp.bias)
                s, mu = self._gaussian_params(params[:, :, i : i + 1, j : j + 1], ctx)
                v = y[:, :, i : i + 1, j : j + 1]
                y_hat[:, :, i + p : i + p + 1, j + p : j + p + 1] = q.from_symbols(
                    q.symbols(v, mu), mu
                ).to(y.dtype)
                scales[:, :, i : i + 1, j : j + 1] = s
                means[:, :, i : i + 1, j : j + 1] = mu
        return y_hat[:, :, p : p + h, p : p + w], scales, means

    # -- the three passes ---------------------------------------------------------------
    def forward_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        y, z = latents["y"], latents["z"]
        z_hat, z_lik, z_rate = self._bottleneck("z", z)
        params = self.net.h_s(z_hat)
        if self.training:
            context_input = self.quantizers["y"](y, None).dist
            ctx = self.net.context_prediction(context_input)
            scales, means = self._gaussian_params(params, ctx)
        else:  # the distribution the coder uses, and y quantized in it: the decoder's values
            _, scales, means = self._serial(y, params)
        y_hat, y_lik, y_rate = self._gaussian(y, scales, means)
        return {
            "x_hat": self.net.g_s(y_hat),
            "likelihoods": {"y": y_lik, "z": z_lik},
            "latents": {"y": y_hat, "z": z_hat},
            "rate_latents": {"y": y_rate, "z": z_rate},
        }

    def compress_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        y, z = latents["y"], latents["z"]
        z_strings, z_enc = self._code_bottleneck("z", z)
        z_hat = self._decode_bottleneck("z", z_strings, z.shape[-2:])
        params = self.net.h_s(z_hat)
        y_hat, scales, means = self._serial(y, params)
        q = self.quantizers["y"]
        gc = self.net.gaussian_conditional
        tables = q.tables(coding.GaussianTables(gc, scales))
        indexes = tables.indexes if tables.indexes is not None else gc.build_indexes(scales)
        symbols = q.symbols(y, means)
        # raster order, channels inner: the order the serial decoder reads them in
        strings = coding.encode(symbols.permute(0, 2, 3, 1), indexes.permute(0, 2, 3, 1), tables)
        return {
            "strings": [strings, z_strings],
            "shape": z.shape[-2:],
            "latents": {"y": q.from_symbols(symbols, means).to(y.dtype), "z": z_enc},
        }

    def decompress(self, strings: list, shape) -> dict[str, Any]:
        z_hat = self._decode_bottleneck("z", strings[1], shape)
        params = self.net.h_s(z_hat)
        y_hat = torch.cat(
            [self._decode_one(s, params[n : n + 1]) for n, s in enumerate(strings[0])]
        )
        return {"x_hat": self.net.g_s(y_hat).clamp_(0, 1), "latents": {"y": y_hat, "z": z_hat}}

    def _decode_one(self, string: bytes, params: Tensor) -> Tensor:
        """The decoder's loop for one image: the encoder's, reading symbols from ``string``."""
        q = self.quantizers["y"]
        gc = self.net.gaussian_conditional
        k, p = self._kernel
        cp = self.net.context_prediction
        weight = cp.weight * cp.mask
        c = self.channels("y")
        h, w = params.shape[-2:]
        y_hat = torch.zeros(1, c, h + 2 * p, w + 2 * p, dtype=params.dtype)
        decoder = RansDecoder()
        decoder.set_stream(string)
        tables = None
        for i in range(h):
            for j in range(w):
                ctx = F.conv2d(y_hat[:, :, i : i + k, j : j + k], weight, bias=cp.bias)
                s, mu = self._gaussian_params(params[:, :, i : i + 1, j : j + 1], ctx)
                if tables is None or tables.indexes is not None:  # a step's depend on sigma
                    tables = q.tables(coding.GaussianTables(gc, s))
                index = tables.indexes if tables.indexes is not None else gc.build_indexes(s)
                values = coding.decode_step(decoder, index.reshape(-1).int().tolist(), tables)
                symbols = torch.tensor(values, dtype=torch.int64).view(1, c, 1, 1)
                y_hat[:, :, i + p : i + p + 1, j + p : j + p + 1] = q.from_symbols(symbols, mu).to(
                    params.dtype
                )
        return y_hat[:, :, p : p + h, p : p + w]


class Cheng2020(JointAutoregressive):
    """``cheng2020-anchor``: Cheng, Sun, Takeuchi, Katto, "Learned Image Compression with
    Discretized Gaussian Mixture Likelihoods and Attention Modules", CVPR 2020 (the anchor:
    residual blocks, a single Gaussian); CompressAI's ``Cheng2020Anchor(N)``, ``M = N``.
    The factory's ``M`` is ignored (the architecture ties it to ``N``)."""

    zoo_name = "cheng2020-anchor"
    model_class = Cheng2020Anchor

    def _new_net(self, N: int, M: int):
        return self.model_class(N)


class Cheng2020Attn(Cheng2020):
    """``cheng2020-attn``: Cheng et al., CVPR 2020, with the simplified attention modules;
    CompressAI's ``Cheng2020Attention(N)``, ``M = N`` (the STanH paper's Cheng 2020)."""

    zoo_name = "cheng2020-attn"
    model_class = Cheng2020Attention


@qbench.hookimpl
def qbench_register_backbones(register):
    register(
        "mbt2018",
        JointAutoregressive,
        description="joint autoregressive + hyperprior (Minnen et al. 2018), CompressAI "
        "JointAutoregressiveHierarchicalPriors; serial context coding",
        paths=("checkpoint",),
        reference="compressai/mbt2018",
    )
    register(
        "cheng2020-anchor",
        Cheng2020,
        description="Cheng et al. 2020 anchor (residual blocks, context model), CompressAI "
        "Cheng2020Anchor(N)",
        paths=("checkpoint",),
        reference="compressai/cheng2020-anchor",
    )
    register(
        "cheng2020-attn",
        Cheng2020Attn,
        description="Cheng et al. 2020 with attention, CompressAI Cheng2020Attention(N)",
        paths=("checkpoint",),
        reference="compressai/cheng2020-attn",
    )
