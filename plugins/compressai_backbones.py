"""CompressAI backbones whose quantization goes through qbench quantizers.

Each adapter wraps CompressAI's own model class (``FactorizedPrior``,
``ScaleHyperprior``, ``MeanScaleHyperprior``; not copies) and re-composes its
modules so that every quantization of ``y`` and ``z`` is done by the plugin
quantizer and every likelihood uses the quantizer's ``bins``. With the
``round``-in-eval path and uniform bins the likelihoods equal CompressAI's.
``compress``/``decompress`` use CompressAI's real rANS coder.

The factorized entropy bottleneck rounds around its medians at test time, so
the adapters pass the (detached) medians as the quantizer's ``means``.

``qbench export --format compressai`` writes the wrapped model's own state dict
(``export_state_dict``), which CompressAI's ``from_state_dict`` and
``compressai.utils.eval_model -a <zoo name>`` load; jobs whose quantizers decode
otherwise than CompressAI's rounding are refused.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from compressai.ops import LowerBound
from torch import Tensor

import qbench
from qbench import coding
from qbench.fetch import Offline, curl, fetch, offline_message, reason
from qbench.likelihoods import bottleneck_likelihood, gaussian_likelihood
from qbench.registry import QbenchError


class CheckpointError(QbenchError):
    """A checkpoint file that cannot be read or does not fit the model."""


#: The SHA-256 prefix a zoo file's name carries (``name-<hex>.ext``: torch hub's
#: ``check_hash`` convention, ``torch.hub.HASH_REGEX``, with at least 8 digits).
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.")


def zoo_file(zoo_name: str, quality: int) -> tuple[str, Path, Offline]:
    """``(url, path, offline)`` of CompressAI's zoo weights ``zoo_name`` (MSE, ``quality``):
    the URL of ``compressai.zoo.image.model_urls``, the file in torch hub's cache
    (``torch.hub.get_dir()/checkpoints/<file name of the URL>``) and how to put it there
    without network."""
    from compressai.zoo.image import model_urls

    url = model_urls[zoo_name]["mse"][quality]
    name = Path(urllib.parse.urlparse(url).path).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    offline = Offline(
        place=f"put {name} into {path.parent} (torch hub's cache, $TORCH_HOME/hub/checkpoints)",
        command=f"on a machine with network `{curl(url, path)}`, then copy the file to the "
        "same path here",
    )
    return url, path, offline


def zoo_weights_message(zoo_name: str, quality: int, error: BaseException) -> str:
    """The error of CompressAI's zoo weights (``zoo_name``, MSE, ``quality``) that could not
    be downloaded (``error``): the URL, the file in torch hub's cache and the command that
    fetches it on a machine with network (:func:`zoo_file`)."""
    url, _, offline = zoo_file(zoo_name, quality)
    return offline_message(f"pretrained = {quality} ({zoo_name})", url, reason(error), offline)


def load_zoo_state(zoo_name: str, quality: int) -> dict[str, Tensor]:
    """The state dict of CompressAI's zoo weights ``zoo_name`` (MSE, ``quality``), with
    CompressAI's key names (``compressai.zoo.pretrained.load_pretrained``).

    The file is the one torch hub's cache holds (:func:`zoo_file`), fetched there through
    :func:`qbench.fetch.fetch` when absent. Before anything is unpickled its SHA-256 must
    start with the prefix the file name carries (CompressAI publishes its weights under
    such names), and it is read with ``torch.load(weights_only=True)``, so a file put in
    the cache by someone else runs no code. A mismatch raises :class:`CheckpointError`
    naming the file (a download that does not match is not kept; a file that was already
    there is left as it is).
    """
    from compressai.zoo.pretrained import load_pretrained

    url, path, offline = zoo_file(zoo_name, quality)
    what = f"pretrained = {quality} ({zoo_name})"
    found = _HASH_PREFIX.search(path.name)
    if found is None:
        raise CheckpointError(
            f"{what}: {url} carries no SHA-256 prefix in its name (name-<hex>.ext), so its "
            "weights cannot be checked; not loaded"
        )
    fresh = not path.exists()
    fetch(url, path, None, what=what, offline=offline)
    digest = _sha256(path)
    if not digest.startswith(found.group(1)):
        if fresh:
            path.unlink(missing_ok=True)
        kept = (
            "the download was not kept"
            if fresh
            else "not loaded; delete it to have it fetched again, or put the published file there"
        )
        raise CheckpointError(
            f"{what}: {path} has SHA-256 {digest}, its name says {found.group(1)}...; {kept}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{what}: {path}: cannot load weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {path}: not a state dict of tensors")
    return load_pretrained(state)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict saved with ``torch.save`` into ``model`` (``weights_only=True``).

    Accepts a bare state dict, one under ``"state_dict"``, or a qbench
    checkpoint of the same backbone (``qbench export``, a run's
    ``checkpoints/<train_id>.pt``: the adapter's keys ``net.*``, whose
    quantizer entries are left out, so any quantizer fine-tunes from it);
    float16 tensors are widened. Raises :class:`CheckpointError` naming the
    file and the first mismatched key.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (got {type(state).__name__})")
    if any(str(k).startswith("net.") for k in state):  # a qbench checkpoint
        state = {k[4:]: v for k, v in state.items() if str(k).startswith("net.")}
    own = model.state_dict()
    # CompressAI resizes the entropy coder's CDF buffers on load; skip them in the check.
    resizable = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
    for key, value in own.items():
        if key not in state:
            raise CheckpointError(f"{path}: does not fit the model: key {key!r} is missing")
        if key.endswith(resizable):
            continue
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: does not fit the model: key {key!r} has shape "
                f"{tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
            )
    for key in state:
        if key not in own:
            raise CheckpointError(f"{path}: does not fit the model: unexpected key {key!r}")
    model.load_state_dict(
        {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    )


#: A quantizer's test-time methods; one that overrides any of them decodes to its own values.
_DECODING = ("quantize", "bins", "symbols", "from_symbols", "tables")


def _decodes_otherwise(latent: str, q: qbench.Quantizer) -> str:
    """Why quantizer ``q`` of ``latent`` decodes to other values than CompressAI's integer
    rounding around the means (``""`` when it does not)."""
    name = type(q).__name__
    own = [m for m in _DECODING if getattr(type(q), m) is not getattr(qbench.Quantizer, m)]
    if own:
        return f"the quantizer of latent {latent!r} ({name}) quantizes by its own {', '.join(own)}"
    for what, step in (("step", q.step()), ("reconstruction step", q.reconstruction_step())):
        if step is not None and not bool(torch.all(step.detach() == 1)):
            values = step.detach().flatten()
            shown = f"{float(values[0]):.4g}" if values.numel() == 1 else f"{values.numel()} values"
            return (
                f"the quantizer of latent {latent!r} ({name}) has a quantization {what} ({shown})"
            )
    return ""


class _CompressAIBackbone(qbench.Backbone):
    """Common parts of the CompressAI adapters (``self.net`` is CompressAI's model)."""

    zoo_name = ""
    model_class: type = FactorizedPrior

    def __init__(
        self,
        N: int = 128,
        M: int = 192,
        checkpoint: str | None = None,
        pretrained: int | None = None,
        pretrained_quality: int | None = None,
    ) -> None:
        super().__init__()
        if int(N) < 1 or int(M) < 1:
            raise ValueError(f"N and M (channel counts) must be >= 1, got N={N}, M={M}")
        quality = pretrained if pretrained is not None else pretrained_quality
        if quality is not None:
            self.net = self._zoo(quality)
        else:
            self.net = self._new_net(int(N), int(M))
        if checkpoint is not None:
            load_checkpoint(self.net, checkpoint)
        gc = getattr(self.net, "gaussian_conditional", None)
        self._default_scale_bound = gc.lower_bound_scale if gc is not None else None

    def _new_net(self, N: int, M: int):
        """CompressAI's model with ``N`` and ``M`` channels, freshly initialised."""
        return self.model_class(N, M)

    def _zoo(self, quality: int):
        """CompressAI's pretrained model of ``quality`` (MSE): its architecture built from
        the zoo's weights as ``compressai.zoo`` does (``from_state_dict``), the weights
        read by :func:`load_zoo_state` (torch hub's cache, hash-checked, ``weights_only``;
        a download that fails raises :class:`qbench.fetch.FetchError` naming the file and
        where to put it)."""
        from compressai.zoo.image import model_architectures, model_urls

        qualities = sorted(model_urls[self.zoo_name]["mse"])
        if isinstance(quality, bool) or int(quality) != quality or quality not in qualities:
            raise QbenchError(
                f"pretrained = {quality!r}: CompressAI's {self.zoo_name} zoo has qualities "
                f"{qualities[0]}..{qualities[-1]}"
            )
        state = load_zoo_state(self.zoo_name, int(quality))
        try:
            net = model_architectures[self.zoo_name].from_state_dict(state)
        except (KeyError, RuntimeError, IndexError) as exc:
            _, path, _ = zoo_file(self.zoo_name, int(quality))
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"pretrained = {quality} ({self.zoo_name}): {path} does not fit CompressAI's "
                f"{self.zoo_name} ({first})"
            ) from exc
        if not isinstance(net, model_architectures[self.zoo_name]):  # pragma: no cover
            raise QbenchError(f"the zoo's {self.zoo_name} is not {self.model_class.__name__}")
        return net

    def set_quantizers(self, quantizers):
        super().set_quantizers(quantizers)
        gc = getattr(self.net, "gaussian_conditional", None)
        if gc is not None:
            bound = getattr(self.quantizers["y"], "scale_bound", None)
            gc.lower_bound_scale = (
                self._default_scale_bound if bound is None else LowerBound(float(bound))
            )

    def channels(self, latent: str) -> int | None:
        return {"y": self.net.M, "z": self.net.N}.get(latent)

    def capabilities(self, latent: str) -> frozenset[str]:
        # every latent is coded whole by code_latent / decode_latent: a dither can follow it
        if latent == "y" and getattr(self.net, "gaussian_conditional", None) is not None:
            return frozenset({"gaussian_scale", "dithered_coding"})
        # the bottleneck rounds around its (detached) medians
        return frozenset({"means", "dithered_coding"})

    def settings(self) -> dict[str, Any]:
        gc = getattr(self.net, "gaussian_conditional", None)
        if gc is None:
            return {}
        return {"scale_bound": float(f"{float(gc.lower_bound_scale.bound):.6g}")}

    def aux_parameters(self):
        return (p for n, p in self.net.named_parameters() if n.endswith("quantiles"))

    def aux_loss(self) -> Tensor:
        return self.net.aux_loss()

    def analysis_parameters(self):
        return self.net.g_a.parameters()

    def analysis(self, x: Tensor) -> Tensor:
        return self.net.g_a(x)

    def update(self, force: bool = True) -> None:
        self.net.update(force=force)

    # -- weights for CompressAI's own tools (qbench export --format compressai) ----
    def export_state_dict(self, fmt: str) -> dict[str, Tensor]:
        """``"compressai"``: the state dict of CompressAI's own model (``self.net``).

        Its keys are the model's (no ``net.`` prefix), so ``model_class.from_state_dict``
        and ``compressai.utils.eval_model`` load it strictly: the transforms, the
        entropy bottleneck's quantiles and CDF tables and the Gaussian conditional's
        scale table as :meth:`update` left them, and the likelihood and scale lower
        bounds (a quantizer's ``scale_bound`` is that bound, so it travels). Nothing
        of the quantizers is kept: CompressAI rounds every latent to the integers
        around its means (the medians for the bottleneck), which is what qbench's
        uniform quantizers do at test time. A quantizer that decodes otherwise (a
        quantization step or gain, STanH's levels) is refused with the reason: the
        file would not reproduce qbench's numbers.
        """
        if fmt != "compressai":
            return super().export_state_dict(fmt)
        problems = [
            why
            for latent in self.latents
            if (why := _decodes_otherwise(latent, self.quantizers[latent]))
        ]
        if problems:
            raise QbenchError(
                f"cannot export for CompressAI's {self.model_class.__name__}: "
                f"{'; '.join(problems)}. CompressAI's model rounds every latent to the "
                "integers around its means, so the file would not reproduce qbench's numbers"
            )
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def export_architecture(self, fmt: str) -> str:
        """CompressAI's name of the model (``compressai.zoo``, ``eval_model -a``)."""
        return self.zoo_name if fmt == "compressai" else super().export_architecture(fmt)

    # -- the passes, through the latents (encode / forward_latents / compress_latents) --
    def forward(self, x: Tensor) -> dict[str, Any]:
        return self.forward_latents(self.encode(x))

    def compress(self, x: Tensor) -> dict[str, Any]:
        return self.compress_latents(self.encode(x))

    # -- one latent through the factorized entropy bottleneck ------------------
    def _medians(self, channels: int, dims: int = 4) -> Tensor:
        eb = self.net.entropy_bottleneck
        return eb._get_medians().detach().reshape(1, channels, *([1] * (dims - 2)))

    def _channel_indexes(self, shape) -> Tensor:
        channels = shape[1]
        return torch.arange(channels).view(1, -1, *([1] * (len(shape) - 2))).expand(*shape)

    def _bottleneck(self, name: str, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(value fed onwards, likelihoods, rate value)`` of latent ``name``."""
        eb = self.net.entropy_bottleneck
        return self.quantize_latent_with_rate(
            name, z, self._medians(z.shape[1], z.dim()), partial(bottleneck_likelihood, eb)
        )

    def _code_bottleneck(self, name: str, z: Tensor) -> tuple[list[bytes], Tensor]:
        tables = coding.BottleneckTables(self.net.entropy_bottleneck)
        med = self._medians(z.shape[1], z.dim())
        return self.code_latent(name, z, med, tables, self._channel_indexes(z.shape))

    def _decode_bottleneck(self, name: str, strings: list[bytes], shape) -> Tensor:
        eb = self.net.entropy_bottleneck
        size = (len(strings), eb._get_medians().shape[0], *shape)
        tables = coding.BottleneckTables(eb)
        med = self._medians(size[1], len(size))
        return self.decode_latent(name, strings, med, tables, self._channel_indexes(size))

    # -- y through the Gaussian conditional ------------------------------------
    def _gaussian(
        self, y: Tensor, scales: Tensor, means: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(value fed onwards, likelihoods, rate value)`` of ``y``."""
        gc = self.net.gaussian_conditional
        return self.quantize_latent_with_rate(
            "y", y, means, partial(gaussian_likelihood, gc, scales=scales, means=means)
        )

    def _code_gaussian(self, y: Tensor, scales: Tensor, means: Tensor | None):
        gc = self.net.gaussian_conditional
        tables = coding.GaussianTables(gc, scales)
        return self.code_latent("y", y, means, tables, gc.build_indexes(scales))

    def _decode_gaussian(self, strings, scales: Tensor, means: Tensor | None) -> Tensor:
        gc = self.net.gaussian_conditional
        tables = coding.GaussianTables(gc, scales)
        y_hat = self.decode_latent("y", strings, means, tables, gc.build_indexes(scales))
        return y_hat.to(scales.dtype)


class Factorized(_CompressAIBackbone):
    """``bmshj2018-factorized``: Ballé, Minnen, Singh, Hwang, Johnston, ICLR 2018
    (factorized prior), CompressAI's ``FactorizedPrior(N, M)``. Latent ``y``."""

    latents = ("y",)
    zoo_name = "bmshj2018-factorized"
    model_class = FactorizedPrior

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        return {"y": self.net.g_a(x)}

    def forward_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        y_hat, y_lik, y_rate = self._bottleneck("y", latents["y"])
        return {
            "x_hat": self.net.g_s(y_hat),
            "likelihoods": {"y": y_lik},
            "latents": {"y": y_hat},
            "rate_latents": {"y": y_rate},
        }

    def compress_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        y = latents["y"]
        strings, y_hat = self._code_bottleneck("y", y)
        return {"strings": [strings], "shape": y.shape[-2:], "latents": {"y": y_hat}}

    def decompress(self, strings: list, shape) -> dict[str, Any]:
        y_hat = self._decode_bottleneck("y", strings[0], shape)
        return {"x_hat": self.net.g_s(y_hat).clamp_(0, 1), "latents": {"y": y_hat}}


class Hyperprior(_CompressAIBackbone):
    """``bmshj2018-hyperprior``: Ballé et al., ICLR 2018 (scale hyperprior),
    CompressAI's ``ScaleHyperprior(N, M)``. Latents ``y`` (Gaussian, zero mean)
    and ``z`` (factorized)."""

    latents = ("y", "z")
    zoo_name = "bmshj2018-hyperprior"
    model_class = ScaleHyperprior

    def _params(self, z_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.net.h_s(z_hat), None

    def _hyper_input(self, y: Tensor) -> Tensor:
        return torch.abs(y)

    def encode(self, x: Tensor) -> dict[str, Tensor]:
        y = self.net.g_a(x)
        return {"y": y, "z": self.net.h_a(self._hyper_input(y))}

    def forward_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        y, z = latents["y"], latents["z"]
        z_hat, z_lik, z_rate = self._bottleneck("z", z)
        scales, means = self._params(z_hat)
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
        scales, means = self._params(z_hat)
        y_strings, y_enc = self._code_gaussian(y, scales, means)
        return {
            "strings": [y_strings, z_strings],
            "shape": z.shape[-2:],
            "latents": {"y": y_enc, "z": z_enc},
        }

    def decompress(self, strings: list, shape) -> dict[str, Any]:
        z_hat = self._decode_bottleneck("z", strings[1], shape)
        scales, means = self._params(z_hat)
        y_hat = self._decode_gaussian(strings[0], scales, means)
        return {"x_hat": self.net.g_s(y_hat).clamp_(0, 1), "latents": {"y": y_hat, "z": z_hat}}


class MeanScale(Hyperprior):
    """``mbt2018-mean``: Minnen, Ballé, Toderici, NeurIPS 2018 (mean-scale
    hyperprior without context model), CompressAI's ``MeanScaleHyperprior(N, M)``."""

    zoo_name = "mbt2018-mean"
    model_class = MeanScaleHyperprior

    def _params(self, z_hat: Tensor) -> tuple[Tensor, Tensor | None]:
        scales, means = self.net.h_s(z_hat).chunk(2, 1)
        return scales, means

    def _hyper_input(self, y: Tensor) -> Tensor:
        return y

    def capabilities(self, latent: str) -> frozenset[str]:
        if latent == "y":
            return frozenset({"gaussian_scale", "means", "learned_means", "dithered_coding"})
        return super().capabilities(latent)


@qbench.hookimpl
def qbench_register_backbones(register):
    register(
        "bmshj2018-factorized",
        Factorized,
        description="factorized prior (Balle et al. 2018), CompressAI FactorizedPrior",
        paths=("checkpoint",),
        reference="compressai/bmshj2018-factorized",
    )
    register(
        "bmshj2018-hyperprior",
        Hyperprior,
        description="scale hyperprior (Balle et al. 2018), CompressAI ScaleHyperprior",
        paths=("checkpoint",),
        reference="compressai/bmshj2018-hyperprior",
    )
    register(
        "mbt2018-mean",
        MeanScale,
        description="mean-scale hyperprior (Minnen et al. 2018), CompressAI MeanScaleHyperprior",
        paths=("checkpoint",),
        reference="compressai/mbt2018-mean",
    )
