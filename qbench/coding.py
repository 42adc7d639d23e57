"""Entropy coding of a quantizer's symbols with CompressAI's rANS coder: one path for all.

A backbone codes every latent the same way (:meth:`qbench.Backbone.code_latent`):
the quantizer gives the integer ``symbols``, the entropy model and the
quantizer together give the probability ``tables`` (one table per scale or
channel, picked per symbol by ``indexes``), and :func:`encode` /
:func:`decode` run CompressAI's ``RansEncoder.encode_with_indexes`` over them.

An entropy model is seen through :class:`EntropyTables`, which offers two
kinds of table:

* ``integer_tables()``: the model's own tables for integer symbols with unit
  cells, exactly those CompressAI's ``compress`` uses (uniform rounding,
  bit-identical bitstreams);
* ``cell_tables(lower, upper)``: tables over ``L`` levels whose cells
  (relative to the mean) are given, ``pmf[k, j] = CDF_k(upper_j) -
  CDF_k(lower_j)``, each made a 16-bit quantized CDF
  (``pmf_to_quantized_cdf``, the leftover tail mass as CompressAI's escape
  symbol); the symbols are then level indices ``0..L-1`` (non-uniform
  quantizers such as STanH).

The quantizer chooses which (``Quantizer.tables``), so no backbone branches
on the kind of quantizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import RansDecoder, RansEncoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor

from qbench.likelihoods import bottleneck_likelihood
from qbench.registry import QbenchError
from qbench.tensors import per_channel

PRECISION = 16
#: Largest symbol magnitude a factorized step table spans (values beyond are escaped).
MAX_STEP_SYMBOLS = 4096


@dataclass
class CdfTables:
    """Quantized CDFs of ``K`` tables over ``L`` symbols, as the rANS coder wants them.

    ``indexes``, when set, are the per-value table indexes to use instead of
    the backbone's (a quantization step re-indexes a Gaussian's scale tables).
    """

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]
    indexes: Tensor | None = None


def build_tables(pmf: Tensor | list[Tensor], offsets: list[int] | None = None) -> CdfTables:
    """Tables from ``K`` pmf rows (a ``K x L`` tensor, or a list of rows of their own
    lengths); rows need not sum exactly to 1 (the rest is the tail, CompressAI's escape
    symbol). ``offsets``: each table's first symbol (0 by default)."""
    cdfs, lengths = [], []
    for row in pmf:
        row = row.detach().double().cpu().clamp_min(0)
        tail = max(1.0 - float(row.sum()), 1e-9)
        prob = torch.cat([row, row.new_tensor([tail])]).float()
        cdf = pmf_to_quantized_cdf(prob.tolist(), PRECISION)
        cdfs.append(list(cdf))
        lengths.append(len(cdf))
    width = max(lengths)
    cdfs = [c + [0] * (width - len(c)) for c in cdfs]
    return CdfTables(cdfs, lengths, list(offsets) if offsets is not None else [0] * len(cdfs))


def _own_tables(model) -> CdfTables:
    """A CompressAI entropy model's own tables (after ``update``), as its ``compress`` uses."""
    return CdfTables(
        model._quantized_cdf.tolist(),
        model._cdf_length.reshape(-1).int().tolist(),
        model._offset.reshape(-1).int().tolist(),
    )


class EntropyTables:
    """The probability tables an entropy model offers a quantizer (see the module docstring)."""

    def integer_tables(self) -> CdfTables:
        """Tables for integer symbols with unit cells (CompressAI's own)."""
        raise NotImplementedError

    def cell_tables(self, lower: Tensor, upper: Tensor) -> CdfTables:
        """Tables over ``L`` levels with cells ``[lower_j, upper_j]`` relative to the mean."""
        raise NotImplementedError

    def step_tables(self, step: Tensor) -> CdfTables:
        """Tables for integer symbols ``k`` whose cells are ``[(k - 1/2) Δ, (k + 1/2) Δ]``
        relative to the mean, ``Δ = step`` a scalar or one per channel."""
        raise NotImplementedError

    def shifted_tables(self, shifts: Tensor) -> CdfTables:
        """Tables for integer symbols ``k`` whose cells are ``[k + o - 1/2, k + o + 1/2]``
        relative to the mean, one set per shift ``o`` of ``shifts`` (``S`` values in
        ``(-1/2, 1/2)``): table ``b * S + s`` is the model's table ``b`` (the index the
        backbone gives a value) with shift ``shifts[s]`` (universal quantization's
        dithered cells, ``Quantizer.table_indexes`` picks them)."""
        raise NotImplementedError


#: built shifted tables of Gaussian conditionals, by what they depend on (a few at most)
_SHIFTED: dict[tuple, CdfTables] = {}


class GaussianTables(EntropyTables):
    """Tables of a :class:`~compressai.entropy_models.GaussianConditional`: one per entry
    of its ``scale_table`` (scale lower-bounded as in training), indexed by
    ``build_indexes(scales)``. ``scales`` (the values' predicted scales) are needed
    by :meth:`step_tables` only."""

    def __init__(self, gc: GaussianConditional, scales: Tensor | None = None) -> None:
        self.gc = gc
        self.scales = scales

    def integer_tables(self) -> CdfTables:
        return _own_tables(self.gc)

    def step_tables(self, step: Tensor) -> CdfTables:
        """CompressAI's own integer tables, indexed by ``build_indexes(scales / Δ)``:
        the mass of ``[(k -+ 1/2) Δ]`` under ``N(0, σ)`` is that of ``[k -+ 1/2]`` under
        ``N(0, σ / Δ)`` (QVRF's coding, Tong et al. 2023)."""
        if self.scales is None:
            raise ValueError(
                "a quantizer with a step needs GaussianTables(gc, scales): the backbone "
                "must pass the predicted scales"
            )
        scaled = self.scales / per_channel(step.to(self.scales), self.scales)
        tables = _own_tables(self.gc)
        tables.indexes = self.gc.build_indexes(scaled)
        return tables

    @torch.no_grad()
    def shifted_tables(self, shifts: Tensor) -> CdfTables:
        """One table per (scale of the scale table, shift), each over ``k = -c..c`` with
        ``c`` CompressAI's own reach for that scale (``ceil(σ q)``, ``q`` the quantile of
        its ``tail_mass``) plus one for the shift; the mass beyond is escaped."""
        gc = self.gc
        key = (
            id(gc),
            gc.scale_table.data_ptr(),
            gc.scale_table._version,
            id(gc.lower_bound_scale),
            tuple(shifts.tolist()),
        )
        if key not in _SHIFTED:  # ~0.5 s to build: once per model state, not per image
            if len(_SHIFTED) >= 8:
                _SHIFTED.pop(next(iter(_SHIFTED)))
            _SHIFTED[key] = self._build_shifted(shifts)
        return _SHIFTED[key]

    def _build_shifted(self, shifts: Tensor) -> CdfTables:
        gc = self.gc
        scales = gc.lower_bound_scale(gc.scale_table).double()
        reach = float(-gc._standardized_quantile(gc.tail_mass / 2))
        rows, offsets = [], []
        for sigma in scales:
            c = int(math.ceil(float(sigma) * reach)) + 1
            k = torch.arange(-c, c + 1, dtype=torch.float64).view(1, -1)
            o = shifts.detach().double().cpu().view(-1, 1)
            cdf = gc._standardized_cumulative
            rows += list(cdf((k + o + 0.5) / sigma) - cdf((k + o - 0.5) / sigma))
            offsets += [-c] * len(o)
        return build_tables(rows, offsets)

    @torch.no_grad()
    def cell_tables(self, lower: Tensor, upper: Tensor) -> CdfTables:
        gc = self.gc
        scales = gc.lower_bound_scale(gc.scale_table).view(-1, 1)
        pmf = gc._standardized_cumulative(upper.view(1, -1) / scales) - gc._standardized_cumulative(
            lower.view(1, -1) / scales
        )
        return build_tables(pmf)


class BottleneckTables(EntropyTables):
    """Tables of an :class:`~compressai.entropy_models.EntropyBottleneck`: one per channel,
    cells relative to the channel's median."""

    def __init__(self, eb: EntropyBottleneck) -> None:
        self.eb = eb

    def integer_tables(self) -> CdfTables:
        return _own_tables(self.eb)

    @torch.no_grad()
    def cell_tables(self, lower: Tensor, upper: Tensor) -> CdfTables:
        med = self.eb._get_medians().detach().reshape(1, -1, 1)
        channels = med.shape[1]
        lo = lower.view(1, 1, -1).expand(1, channels, -1) + med
        hi = upper.view(1, 1, -1).expand(1, channels, -1) + med
        return build_tables(bottleneck_likelihood(self.eb, lo, hi)[0])

    @torch.no_grad()
    def shifted_tables(self, shifts: Tensor) -> CdfTables:
        """One table per (channel, shift) over ``k = -K..K`` with cells
        ``median + [k + o -+ 1/2]``, ``K`` the bottleneck's quantile reach plus one (values
        beyond are escaped by the coder)."""
        eb = self.eb
        med = eb._get_medians().detach().reshape(1, -1, 1)
        channels = med.shape[1]
        q = eb.quantiles.detach().reshape(channels, 3)
        reach = torch.maximum(q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]).max()
        k_max = int(torch.ceil(reach).clamp(1, MAX_STEP_SYMBOLS)) + 1
        k = torch.arange(-k_max, k_max + 1, dtype=med.dtype).view(1, 1, -1)
        per_shift = [  # C x (2K + 1) each
            bottleneck_likelihood(eb, med + k + float(o) - 0.5, med + k + float(o) + 0.5)[0]
            for o in shifts.detach().cpu()
        ]
        rows = torch.stack(per_shift, dim=1).reshape(channels * len(per_shift), -1)
        return build_tables(rows, [-k_max] * len(rows))

    @torch.no_grad()
    def step_tables(self, step: Tensor) -> CdfTables:
        """Per-channel tables over ``k = -K..K`` with cells ``median + [(k -+ 1/2) Δ_c]``;
        ``K`` covers the bottleneck's quantile range at the smallest step (values
        beyond are escaped by the coder)."""
        eb = self.eb
        med = eb._get_medians().detach().reshape(1, -1, 1)
        channels = med.shape[1]
        step = step.detach().float().reshape(-1).expand(channels).reshape(1, channels, 1)
        q = eb.quantiles.detach().reshape(channels, 3)
        reach = torch.maximum(q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]).reshape(1, channels, 1)
        k_max = int(torch.ceil((reach / step).max()).clamp(1, MAX_STEP_SYMBOLS)) + 1
        k = torch.arange(-k_max, k_max + 1, dtype=torch.float32).view(1, 1, -1)
        lo, hi = med + (k - 0.5) * step, med + (k + 0.5) * step
        tables = build_tables(bottleneck_likelihood(eb, lo, hi)[0])
        tables.offsets = [-k_max] * channels
        return tables


#: The largest symbol magnitude qbench hands to CompressAI's rANS coder. The coder
#: escapes a symbol outside its table in 4-bit chunks, counted in a 32-bit integer; from
#: a magnitude of about 2^27 on the count overflows and ``encode_with_indexes`` never
#: returns (measured with CompressAI 1.2.8: 134217728 codes, 200000000 hangs). A trained
#: model's symbols are a few hundred at most; a model whose latents blew up in training
#: (a collapse) gets a clear error instead of a job that never ends.
MAX_SYMBOL = 2**26


def encode(symbols: Tensor, indexes: Tensor, tables: CdfTables) -> list[bytes]:
    """One byte string per batch element; ``indexes`` in ``[0, K)`` pick each symbol's table.

    Symbols outside a table's range are escaped by the coder (as CompressAI does). Raises
    :class:`~qbench.registry.QbenchError` for a non-finite symbol or one beyond
    :data:`MAX_SYMBOL` in magnitude, which the coder cannot code.
    """
    if symbols.numel():
        finite = bool(torch.isfinite(symbols).all()) if symbols.is_floating_point() else True
        largest = float(symbols.abs().max()) if finite else float("inf")
        if largest > MAX_SYMBOL:
            raise QbenchError(
                f"a latent symbol of magnitude {largest:.4g} is beyond what CompressAI's rANS "
                f"coder can code (at most {MAX_SYMBOL}; beyond about 2^27 it never returns): "
                "the model's latents are out of range (a training that collapsed?)"
            )
    enc = RansEncoder()
    out = []
    for s, i in zip(symbols, indexes):
        out.append(
            enc.encode_with_indexes(
                s.reshape(-1).int().tolist(),
                i.reshape(-1).int().tolist(),
                tables.cdfs,
                tables.lengths,
                tables.offsets,
            )
        )
    return out


def decode(strings: list[bytes], indexes: Tensor, tables: CdfTables) -> Tensor:
    """Inverse of :func:`encode`: the int64 symbols, shaped like ``indexes``."""
    dec = RansDecoder()
    out = torch.empty(indexes.shape, dtype=torch.int64)
    for n, s in enumerate(strings):
        values = dec.decode_with_indexes(
            s, indexes[n].reshape(-1).int().tolist(), tables.cdfs, tables.lengths, tables.offsets
        )
        out[n] = torch.tensor(values, dtype=torch.int64).reshape(indexes[n].shape)
    return out.to(indexes.device)


def decode_step(decoder: RansDecoder, indexes: list[int], tables: CdfTables) -> list[int]:
    """The next ``len(indexes)`` symbols of a stream ``decoder`` reads (``set_stream`` done),
    for a decoder that learns its tables step by step (a context model's positions).

    Only the tables these indexes use are handed to the coder: CompressAI converts every
    table it is given on each call (1.7 ms for the 64 Gaussian tables, most of a context
    model's decoding time), and looks a symbol's table up by its index alone, so the
    symbols are those of ``decoder.decode_stream(indexes, tables...)``, bit for bit."""
    used = sorted(set(indexes))
    slot = {u: i for i, u in enumerate(used)}
    return decoder.decode_stream(
        [slot[i] for i in indexes],
        [tables.cdfs[u] for u in used],
        [tables.lengths[u] for u in used],
        [tables.offsets[u] for u in used],
    )
