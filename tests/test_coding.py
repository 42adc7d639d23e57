"""The rANS coding helpers against the coder's own calls."""

from __future__ import annotations

import torch
from compressai.ans import RansDecoder

from qbench import coding


def _tables() -> coding.CdfTables:
    """Eight discretised Laplacians of growing width, offsets centring each on 0."""
    pmfs, offsets = [], []
    for k in range(8):
        half = 2 + 3 * k
        v = torch.arange(-half, half + 1, dtype=torch.float64)
        p = torch.exp(-v.abs() / (0.5 + k))
        pmfs.append((p / p.sum() * 0.999).float())
        offsets.append(-half)
    return coding.build_tables(pmfs, offsets)


def test_a_step_decodes_the_symbols_of_the_full_tables_bit_for_bit():
    tables = _tables()
    g = torch.Generator().manual_seed(0)
    steps, per_step = 40, 16
    # each step uses a few of the eight tables (as a context model's position does)
    indexes = torch.randint(0, 3, (steps, per_step), generator=g) + torch.randint(
        0, 6, (steps, 1), generator=g
    )
    symbols = torch.randint(-6, 7, (steps, per_step), generator=g)
    symbols[0, 0] = 40  # beyond its table: escaped by the coder, decoded all the same
    string = coding.encode(symbols.reshape(1, -1), indexes.reshape(1, -1), tables)[0]

    ours, full = RansDecoder(), RansDecoder()
    ours.set_stream(string)
    full.set_stream(string)
    for step in range(steps):
        idx = indexes[step].tolist()
        got = coding.decode_step(ours, idx, tables)
        assert got == full.decode_stream(idx, tables.cdfs, tables.lengths, tables.offsets)
        assert got == symbols[step].tolist()
