"""What plugins declare for the report, read through the registry (never by plugin name).

A quantizer class declares ``report_notes`` (``{setting: what a non-zero value
means}``, :class:`qbench.Quantizer`); the report finds each label's class by
the registered name the manifest records for it.
"""

from __future__ import annotations

from collections.abc import Mapping

from qbench.registry import QbenchError


def quantizer_notes(manifest: dict) -> dict[str, Mapping[str, str]]:
    """``{quantizer label: its class's report_notes}`` for the labels of the manifest that
    declare some (a name this qbench does not have declares none)."""
    registered = manifest.get("quantizers") or {}
    if not isinstance(registered, dict) or not registered:
        return {}
    from qbench.plugins import get_plugins

    registry = get_plugins(tuple(manifest.get("disabled_plugins") or ())).registry
    out: dict[str, Mapping[str, str]] = {}
    for label, q in registered.items():
        try:
            entry = registry.get("quantizer", str(q["name"]))
        except (QbenchError, KeyError, TypeError):
            continue
        declared = getattr(entry.factory, "report_notes", None)
        if isinstance(declared, Mapping) and declared:
            out[str(label)] = {str(k): str(v) for k, v in declared.items()}
    return out
