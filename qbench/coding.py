"""Entropy coding of quantization-cell indices with CompressAI's rANS coder.

For quantizers whose levels are not the integers (``Quantizer.uniform`` is
False), a backbone codes the *index* ``j`` of each value's level instead of
the integer symbol. The probability of index ``j`` under table ``k`` is the
probability mass of level ``j``'s cell, ``pmf[k, j] = CDF_k(upper_j) -
CDF_k(lower_j)``; each table becomes a 16-bit quantized CDF
(``pmf_to_quantized_cdf``, with the leftover tail mass as CompressAI's escape
symbol) and the indices are coded with ``RansEncoder.encode_with_indexes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ans import RansDecoder, RansEncoder
from torch import Tensor

PRECISION = 16


@dataclass
class CdfTables:
    """Quantized CDFs of ``K`` tables over ``L`` symbols, as the rANS coder wants them."""

    cdfs: list[list[int]]
    lengths: list[int]
    offsets: list[int]


def build_tables(pmf: Tensor) -> CdfTables:
    """Tables from a ``K x L`` pmf (rows need not sum exactly to 1; the rest is tail)."""
    pmf = pmf.detach().double().cpu().clamp_min(0)
    cdfs, lengths = [], []
    for row in pmf:
        tail = max(1.0 - float(row.sum()), 1e-9)
        prob = torch.cat([row, row.new_tensor([tail])]).float()
        cdf = pmf_to_quantized_cdf(prob.tolist(), PRECISION)
        cdfs.append(list(cdf))
        lengths.append(len(cdf))
    width = max(lengths)
    cdfs = [c + [0] * (width - len(c)) for c in cdfs]
    return CdfTables(cdfs, lengths, [0] * len(cdfs))


def encode(symbols: Tensor, indexes: Tensor, tables: CdfTables) -> list[bytes]:
    """One byte string per batch element; ``symbols`` in ``[0, L)``, ``indexes`` in ``[0, K)``."""
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
