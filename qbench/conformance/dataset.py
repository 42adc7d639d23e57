"""Dataset rules: what a dataset yields, and how a folder-based one treats a bad file."""

from __future__ import annotations

import pytest

from qbench.conformance._rules import fail, rule


@rule("dataset", "rgb_in_unit_range")
def d_rgb(entry, env):
    """Built from its defaults, a dataset yields 3 x H x W float tensors in [0, 1]."""
    from qbench.images import DatasetError

    try:
        ds = entry.build()
    except (DatasetError, TypeError) as exc:
        pytest.skip(f"needs parameters or local data: {exc}")
    if len(ds) == 0:
        fail("rgb_in_unit_range", "dataset is empty")
    for i in range(min(len(ds), 3)):
        x = ds[i]
        if x.dim() != 3 or x.shape[0] != 3 or not x.is_floating_point():
            fail("rgb_in_unit_range", f"item {i}: shape {tuple(x.shape)} dtype {x.dtype}")
        if float(x.min()) < 0 or float(x.max()) > 1:
            fail("rgb_in_unit_range", f"item {i}: values in [{float(x.min())}, {float(x.max())}]")


@rule("dataset", "reports_bad_files")
def d_bad(entry, env):
    """A folder-based dataset (one taking ``path``) skips an unreadable file and names it."""
    import tempfile
    import warnings
    from pathlib import Path

    if "path" not in entry.parameters():
        pytest.skip("not folder-based")
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(Path(d) / "ok.png")
        (Path(d) / "broken.png").write_bytes(b"\x89PNG\r\n broken")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                ds = entry.build(path=d)
            except Exception as exc:
                if "broken.png" in str(exc):
                    return
                from qbench.images import DatasetError

                if isinstance(exc, DatasetError):
                    pytest.skip(f"does not read arbitrary files of a folder: {exc}")
                raise
        skipped = " ".join(str(s) for s in getattr(ds, "skipped", []))
        if "broken.png" not in skipped:
            fail("reports_bad_files", "an unreadable file was neither skipped by name nor reported")
