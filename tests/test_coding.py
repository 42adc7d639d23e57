"""The rANS coding helpers against the coder's own calls."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_coder_codes_large_symbols_and_refuses_those_it_would_hang_on():
    # CompressAI's rANS encoder never returns for a symbol of magnitude 2^28 (measured: the
    # reference study's collapsed context models hung their evaluation); qbench refuses it
    tables = coding.build_tables(torch.tensor([[0.25, 0.5, 0.25]]), offsets=[-1])
    symbols = torch.tensor([[0, 1, -1, coding.MAX_SYMBOL, -coding.MAX_SYMBOL]])
    indexes = torch.zeros_like(symbols)
    strings = coding.encode(symbols, indexes, tables)
    assert torch.equal(coding.decode(strings, indexes, tables), symbols)
    script = (
        "import torch\nfrom qbench import coding\nfrom qbench.registry import QbenchError\n"
        "t = coding.build_tables(torch.tensor([[0.25, 0.5, 0.25]]), offsets=[-1])\n"
        "for s in (2.0**28, float('inf')):\n"
        "    try:\n"
        "        coding.encode(torch.tensor([[0.0, s]]), torch.zeros(1, 2), t)\n"
        "    except QbenchError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2, done.stdout + done.stderr
    assert "magnitude 2.684e+08 is beyond what CompressAI's rANS coder can code" in lines[0]
    assert "magnitude inf" in lines[1]
