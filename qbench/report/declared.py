"""What plugins declared for the report, as the run recorded it in its manifest.

A quantizer class declares ``report_notes`` (``{setting: what a non-zero value
means}``, :class:`qbench.Quantizer`); the runner records each label's notes in
``manifest.json`` (``quantizers.<label>.report_notes``), and the report reads
them from there: it needs no plugin, only the run directory.
"""

from __future__ import annotations

from collections.abc import Mapping


def quantizer_notes(manifest: dict) -> dict[str, Mapping[str, str]]:
    """``{quantizer label: its report_notes}`` for the labels of the manifest that declare
    some (a manifest written before quantizers recorded their notes declares none)."""
    registered = manifest.get("quantizers") or {}
    if not isinstance(registered, dict):
        return {}
    out: dict[str, Mapping[str, str]] = {}
    for label, q in registered.items():
        declared = q.get("report_notes") if isinstance(q, dict) else None
        if isinstance(declared, Mapping) and declared:
            out[str(label)] = {str(k): str(v) for k, v in declared.items()}
    return out
