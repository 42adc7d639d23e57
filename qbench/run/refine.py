"""Encoding-time refinement of each image's latents (``[eval] refine_latents``).

Yang, Bamler & Mandt, "Improving Inference for Neural Image Compression", NeurIPS
2020 (arXiv 2006.04240; mandt-lab/improving-inference-for-neural-image-compression)
optimise, for every image, the latents ``y`` and ``z`` of a *trained* model against
its rate-distortion loss, through stochastic Gumbel annealing (``sga``), then code
the rounded result: a better encoder, the decoder unchanged. :class:`LatentRefiner`
does this for any backbone that offers its latents (``Backbone.encode``,
``forward_latents``, ``compress_latents``) and any surrogate with a training mode:

* the latents start at ``encode(x)`` (the padded image, as the evaluation codes it);
* the model's quantizers are replaced, for the refinement only, by fresh instances of
  the refinement's quantizer in training mode, annealed over the steps
  (``set_progress(step / steps)``); the model's own parameters, its entropy model and
  its scale bound are not touched;
* Adam at ``lr`` minimises ``lambda * 255^2 * MSE + bpp`` on the unpadded image (the
  job's lambda; the rate of all latents over the image's pixels);
* the trained quantizers are put back and the refined latents are coded for real.

The reference's own values: 2000 Adam steps at lr 0.005 with its temperature
schedule (``sga``'s ``schedule = "inference"``, ``ref_steps`` the steps). Its gain
on Kodak: about -15 % BD-rate over the same mbt2018 model (the paper).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from qbench.backbone import Backbone
from qbench.plan.configs import Refinement
from qbench.rd import rd_loss
from qbench.registry import Registry


class LatentRefiner:
    """Refine one image's latents at a time (see the module docstring); it keeps the
    seconds it spent and the images it refined, for the row."""

    def __init__(self, refinement: Refinement, registry: Registry, lmbda: float) -> None:
        self.refinement, self.registry, self.lmbda = refinement, registry, lmbda
        self.seconds, self.images = 0.0, 0

    def _surrogates(self, model: Backbone) -> dict[str, Any]:
        spec = self.refinement.quantizer
        device = next(model.parameters()).device
        out = {}
        for latent in model.latents:
            q = self.registry.build("quantizer", spec.name, **spec.params)
            q.bind(latent, model.channels(latent))
            out[latent] = q.to(device).train()
        return out

    def __call__(self, model: Backbone, xp: Tensor, x: Tensor, crop) -> dict[str, Tensor]:
        """The refined latents of the padded image ``xp`` (``x`` unpadded, ``crop`` the
        function that undoes the padding of an output)."""
        start = time.perf_counter()
        with torch.no_grad():
            latents = {k: v.detach().clone() for k, v in model.encode(xp).items()}
        for v in latents.values():
            v.requires_grad_(True)
        trained = dict(model.quantizers.items())
        surrogates = self._surrogates(model)
        grads = {p: p.requires_grad for p in model.parameters()}
        opt = torch.optim.Adam(latents.values(), lr=self.refinement.lr)
        steps = self.refinement.steps
        try:
            for p in grads:
                p.requires_grad_(False)
            for latent, q in surrogates.items():  # not set_quantizers: nothing re-bound
                model.quantizers[latent] = q
            with torch.enable_grad():
                for step in range(steps):
                    for q in surrogates.values():
                        q.set_progress(step / steps)
                    loss = self._loss(model.forward_latents(latents), x, crop)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        finally:
            for latent, q in trained.items():
                model.quantizers[latent] = q
            for p, flag in grads.items():
                p.requires_grad_(flag)
            model.eval()
        self.seconds += time.perf_counter() - start
        self.images += 1
        return {k: v.detach() for k, v in latents.items()}

    def _loss(self, out: Mapping[str, Any], x: Tensor, crop) -> Tensor:
        cropped = {"x_hat": crop(out["x_hat"]), "likelihoods": out["likelihoods"]}
        return rd_loss(cropped, x, self.lmbda)[0]

    def columns(self, label: str) -> dict[str, Any]:
        """What the row of the arm ``label`` records of the refinement."""
        r = self.refinement
        return {
            "refined_of": label.removesuffix(r.label_of("")),
            "refine_quantizer": r.quantizer.label,
            "refine_settings": "; ".join(f"{k}={v}" for k, v in sorted(r.quantizer.params.items())),
            "refine_steps": r.steps,
            "refine_lr": r.lr,
            "refine_seconds_per_image": self.seconds / self.images if self.images else float("nan"),
        }
