"""The backbone contract: a codec whose every quantization goes through a plugin quantizer.

A backbone declares its quantized latents (``latents``, e.g. ``("y", "z")``)
and the multiple its input sides must be padded to (``multiple``). qbench
builds one :class:`qbench.Quantizer` per latent and hands them over with
:meth:`Backbone.set_quantizers`.

**Where the quantizer is applied**: a backbone passes each latent through
:meth:`Backbone.quantize_latent` in ``forward`` (the surrogate in training,
hard values in eval; the likelihood is computed on the quantizer's ``bins``,
``P = CDF(upper) - CDF(lower)``), and through :meth:`Backbone.code_latent` /
:meth:`Backbone.decode_latent` in ``compress`` / ``decompress`` (the
quantizer's symbols, coded with the tables it picks from the entropy model,
:mod:`qbench.coding`). A backbone written with these three helpers supports
every quantizer, uniform or not, without knowing which it has.

Outputs (all tensors batched, ``N x C x H x W``):

* ``forward(x)`` -> ``{"x_hat", "likelihoods": {latent: P}, "latents": {latent: dist}}``
  where ``latents`` holds the value fed onwards (the surrogate's ``dist`` in
  training mode, the hard value in eval mode). Optionally also
  ``"rate_latents": {latent: rate}``, the value whose likelihood is charged
  (the surrogate's ``rate``; the hard value in eval mode): the ``mismatch``
  metric's rate-path latent mismatch needs it (without it that column is
  undefined and says why). :meth:`Backbone.quantize_latent_with_rate`
  returns it.
* ``compress(x)`` -> ``{"strings", "shape", "latents": {latent: hard values}}``
  (real entropy coding; ``latents`` are what the encoder quantized).
* ``decompress(strings, shape)`` -> ``{"x_hat", "latents": {latent: decoded values}}``.

**What a latent offers a quantizer's options** (:meth:`Backbone.capabilities`,
from the vocabulary :data:`CAPABILITIES`): qbench checks a quantizer's
``requires`` against it before any job starts, so that an option with nothing
to act on (a scale bound on a factorized model) is refused instead of run as a
no-op. :meth:`Backbone.settings` are the backbone's effective settings a
results row records (the Gaussian scale bound in force).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from qbench import coding
from qbench.quantizer import Quantizer
from qbench.registry import QbenchError

#: ``likelihood(lower, upper) -> P``: the entropy model's probability of each cell.
CellLikelihood = Callable[[Tensor, Tensor], Tensor]

#: What a latent can offer a quantizer's options (see ``Quantizer.requires``).
CAPABILITIES = {
    "gaussian_scale": "coded with a Gaussian conditional whose scale lower bound the backbone "
    "takes from the quantizer's scale_bound, in training and in coding",
    "means": "quantized around offsets the backbone passes as means (predicted means, or the "
    "factorized bottleneck's medians)",
    "learned_means": "its means are predicted by the network and receive gradient",
    "dithered_coding": "coded as one whole tensor by code_latent / decode_latent (symbols, "
    "tables and Quantizer.table_indexes at the latent's full shape), so a quantizer may shift "
    "each element's cell by a pseudo-random dither that the decoder regenerates",
}


class Backbone(nn.Module):
    """Base class of codec backbones (see the module docstring for the contract).

    Subclasses implement ``forward``, ``compress``, ``decompress`` and
    ``analysis``, and for CompressAI-style models ``update``, ``aux_loss`` and
    ``aux_parameters``.
    """

    latents: tuple[str, ...] = ("y",)
    multiple: int = 64

    def __init__(self) -> None:
        super().__init__()
        self.quantizers = nn.ModuleDict({name: Quantizer() for name in self.latents})

    def set_quantizers(self, quantizers: Mapping[str, Quantizer]) -> None:
        """Use ``quantizers[latent]`` for each latent (every latent must be given)."""
        missing = set(self.latents) - set(quantizers)
        extra = set(quantizers) - set(self.latents)
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__} quantizes latents {list(self.latents)}; "
                f"got quantizers for {sorted(quantizers)}"
            )
        for name, q in quantizers.items():
            if not isinstance(q, Quantizer):
                raise TypeError(f"quantizer for latent {name!r} is not a qbench.Quantizer: {q!r}")
            q.bind(name, self.channels(name))
        self.quantizers = nn.ModuleDict(dict(quantizers))

    def channels(self, latent: str) -> int | None:
        """The channel count of latent ``latent`` (given to ``Quantizer.bind``); None if unknown."""
        return None

    def capabilities(self, latent: str) -> frozenset[str]:
        """What latent ``latent`` offers a quantizer's options (names from :data:`CAPABILITIES`).

        Default: nothing. A backbone that passes means, or honours a
        quantizer's ``scale_bound``, says so here.
        """
        return frozenset()

    def settings(self) -> dict[str, Any]:
        """The backbone's effective settings a results row records (``{}`` by default)."""
        return {}

    def select_latents(self, latents: Iterable[str] | None) -> tuple[str, ...]:
        """The latents a quantizer entry that lists ``latents`` quantizes (``None``: all).

        A listed name that is not a latent of this backbone is an error naming
        it and the backbone's latents (the one check of an entry's ``latents``:
        preflight and the worker both call it).
        """
        if latents is None:
            return tuple(self.latents)
        unknown = sorted(set(latents) - set(self.latents))
        if unknown:
            raise QbenchError(
                f"latents {unknown} are not latents of this backbone ({list(self.latents)})"
            )
        return tuple(latents)

    def missing_needs(self, quantizer: Quantizer, latents: Iterable[str]) -> dict[str, str]:
        """What ``quantizer`` needs (``Quantizer.needs``) that one of ``latents`` does not
        offer: ``{latent: why}`` (empty when every latent serves it)."""
        out, needs = {}, quantizer.needs()
        for latent in latents:
            caps = self.capabilities(latent)
            missing = [f"{what} needs {cap}" for cap, what in needs.items() if cap not in caps]
            if missing:
                out[latent] = "; ".join(missing)
        return out

    def idle_options(self, quantizer: Quantizer, latents: Iterable[str]) -> dict[str, str]:
        """Options of ``quantizer`` with nothing to act on in any of ``latents``: ``{option: why}``.

        An option is idle in a latent when, as set, it needs a capability
        (``Quantizer.requires``) the latent does not offer
        (:meth:`capabilities`); it is reported when idle in every latent the
        quantizer serves.
        """
        latents = list(latents)
        per_latent = [quantizer.idle(self.capabilities(latent)) for latent in latents]
        if not per_latent:
            return {}
        common = set.intersection(*(set(idle) for idle in per_latent))
        return {
            option: "; ".join(f"{lat}: {idle[option]}" for lat, idle in zip(latents, per_latent))
            for option in sorted(common)
        }

    def set_progress(self, t: float) -> None:
        """Forward the training progress ``t`` in [0, 1] to every quantizer.

        This is the call site of ``Quantizer.set_progress``: the range is
        checked here, so a quantizer need not check it.
        """
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"training progress must lie in [0, 1], got {t}")
        for q in self.quantizers.values():
            q.set_progress(t)

    def end_step(self) -> None:
        """Tell every quantizer that an optimisation step ended (``Quantizer.end_step``)."""
        for q in self.quantizers.values():
            q.end_step()

    # -- applying the quantizers -------------------------------------------------
    def quantize_latent(
        self, latent: str, y: Tensor, means: Tensor | None, likelihood: CellLikelihood
    ) -> tuple[Tensor, Tensor]:
        """``(value fed onwards, likelihoods)`` of latent ``latent`` in ``forward``.

        ``quantizer(y, means)`` gives the surrogate (training) or the hard
        values (eval); the likelihood of its ``rate`` value is
        ``likelihood(*quantizer.bins(rate, means))``. Quantization and
        likelihoods always run in float32, also inside a mixed-precision
        training's autocast region (``[train] amp``): rounding a bfloat16
        latent is not rounding, and a cell's probability is a difference of
        two CDFs that half precision cancels to zero.
        """
        value, lik, _ = self.quantize_latent_with_rate(latent, y, means, likelihood)
        return value, lik

    def quantize_latent_with_rate(
        self, latent: str, y: Tensor, means: Tensor | None, likelihood: CellLikelihood
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`quantize_latent` and the rate value: ``(dist, likelihoods, rate)``.

        ``rate`` is the value whose cell's likelihood is charged (the
        quantizer's ``rate``; the hard value in eval mode). A backbone returns
        it from ``forward`` as ``"rate_latents"`` so that the rate path's
        train-test mismatch can be measured (``mismatch_latent_rate``).
        """
        q = self.quantizers[latent]
        with torch.autocast(y.device.type, enabled=False):
            y = y.float()
            means = means.float() if means is not None else None
            out = q(y, means)
            return out.dist, likelihood(*q.bins(out.rate, means)), out.rate

    def code_latent(
        self,
        latent: str,
        y: Tensor,
        means: Tensor | None,
        entropy: coding.EntropyTables,
        indexes: Tensor,
    ) -> tuple[list[bytes], Tensor]:
        """Entropy-code latent ``latent``: ``(one string per image, the encoder's hard values)``.

        ``indexes`` pick each value's table (a scale index, a channel).
        """
        q = self.quantizers[latent]
        symbols = q.symbols(y, means)
        tables = q.tables(entropy)
        if tables.indexes is not None:  # a quantization step re-indexes the tables
            indexes = tables.indexes
        strings = coding.encode(symbols, q.table_indexes(indexes), tables)
        return strings, q.from_symbols(symbols, means).to(y.dtype)

    def decode_latent(
        self,
        latent: str,
        strings: list[bytes],
        means: Tensor | None,
        entropy: coding.EntropyTables,
        indexes: Tensor,
    ) -> Tensor:
        """Inverse of :meth:`code_latent`: the decoded hard values of latent ``latent``."""
        q = self.quantizers[latent]
        tables = q.tables(entropy)
        if tables.indexes is not None:
            indexes = tables.indexes
        symbols = coding.decode(strings, q.table_indexes(indexes), tables)
        return q.from_symbols(symbols, means)

    # -- parameters ----------------------------------------------------------------
    def quantizer_parameters(self) -> Iterator[nn.Parameter]:
        """The quantizers' own parameters (what a derived model refines)."""
        return self.quantizers.parameters()

    def aux_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters trained by the auxiliary loss only (none by default)."""
        return iter(())

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter the rate-distortion loss trains (all but the auxiliary ones)."""
        aux = {id(p) for p in self.aux_parameters()}
        return (p for p in self.parameters() if id(p) not in aux)

    def analysis_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the analysis transform (gradient statistics are taken wrt these)."""
        return self.main_parameters()

    def parameters_by_name(self, names: Iterable[str]) -> list[nn.Parameter]:
        """The parameters ``names`` name: ``"analysis"`` is :meth:`analysis_parameters`,
        any other name a module path, a prefix of parameter names (``"net.h_a"``). A name
        that matches no parameter is a :class:`~qbench.registry.QbenchError` naming it."""
        named = dict(self.named_parameters())
        out: dict[int, nn.Parameter] = {}
        for name in names:
            if name == "analysis":
                found = list(self.analysis_parameters())
            else:
                found = [p for k, p in named.items() if k == name or k.startswith(name + ".")]
            if not found:
                modules = sorted({".".join(k.split(".")[:2]) for k in named})
                raise QbenchError(
                    f"{name!r} names no parameter of backbone {type(self).__name__} "
                    f'("analysis", or a module path: {", ".join(modules[:16])})'
                )
            out.update({id(p): p for p in found})
        return list(out.values())

    def analysis(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The unquantized main latent ``y`` of ``x`` (for gradient step sizes)."""
        raise NotImplementedError

    def aux_loss(self) -> Tensor | float:
        """The auxiliary loss (CompressAI's quantile loss); 0 by default."""
        return 0.0

    def update(self, force: bool = True) -> None:
        """Rebuild entropy-coder tables after training (no-op by default)."""

    # -- weights for other tools (qbench export --format) ----------------------------
    def export_state_dict(self, fmt: str) -> dict[str, Tensor]:
        """This backbone's current weights as the tools of format ``fmt`` load them.

        ``qbench export --format FMT`` builds the job's backbone and quantizers,
        loads the trained weights, calls :meth:`update`, then this. A backbone
        that wraps another library's model returns that model's own state
        dict (for ``"compressai"``: the keys CompressAI's ``load_state_dict``
        and ``from_state_dict`` expect, nothing of qbench's quantizers), and
        refuses with a :class:`~qbench.registry.QbenchError` saying why when
        the file would not reproduce qbench's numbers (a quantizer that decodes
        to other values than the target model computes). The default refuses
        every format; ``qbench``'s own format is the stored checkpoint and
        needs no backbone.
        """
        raise QbenchError(
            f"backbone {type(self).__name__} cannot export its weights in format {fmt!r} "
            "(it does not implement Backbone.export_state_dict for it)"
        )

    def export_architecture(self, fmt: str) -> str:
        """The name the tools of format ``fmt`` know this architecture by (for
        ``"compressai"``: the ``compressai.zoo`` / ``eval_model -a`` name), printed after
        an export so the file is loaded with the right model class; ``""`` (the
        default) when the format names none."""
        return ""

    # -- the latents as free variables (encoding-time refinement) ----------------------
    def encode(self, x: Tensor) -> dict[str, Tensor]:
        """The unquantized latents of ``x``, by name (``{"y": y, "z": z}``), for an
        encoder that refines them before coding (``[eval] refine_latents``; Yang, Bamler
        & Mandt 2020). A backbone that offers it also implements
        :meth:`forward_latents` and :meth:`compress_latents`, so that ``forward(x)`` is
        ``forward_latents(encode(x))`` and ``compress(x)`` is
        ``compress_latents(encode(x))``. Default: not offered (an error saying so)."""
        raise QbenchError(
            f"backbone {type(self).__name__} does not offer its latents for refinement "
            "(it implements no Backbone.encode / forward_latents / compress_latents)"
        )

    def forward_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        """:meth:`forward`'s output from the given unquantized latents (see :meth:`encode`)."""
        return self.encode(torch.empty(0))  # the error that says refinement is not offered

    def compress_latents(self, latents: Mapping[str, Tensor]) -> dict[str, Any]:
        """:meth:`compress`'s output from the given unquantized latents (see :meth:`encode`)."""
        return self.encode(torch.empty(0))

    def offers_refinement(self) -> bool:
        """Whether :meth:`encode`, :meth:`forward_latents` and :meth:`compress_latents`
        are implemented (checked before any job that refines latents)."""
        kind = type(self)
        return all(
            getattr(kind, m) is not getattr(Backbone, m)
            for m in ("encode", "forward_latents", "compress_latents")
        )

    def forward(self, x: Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def compress(self, x: Tensor) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def decompress(self, strings: Any, shape: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError
