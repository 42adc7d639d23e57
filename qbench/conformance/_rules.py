"""The rule registry every kind's rules join, and how a rule reports a broken contract.

A rule is one function ``check(entry, env)`` registered with :func:`rule`; its
docstring states the rule. It returns when the plugin keeps the rule, raises
:class:`ConformanceFailure` (through :func:`fail`) when it does not, and says
why it cannot be checked here with ``pytest.skip(reason)`` or, for a part of
the rule it had to leave out, by appending the reason to ``env["skipped"]``
(the item then reports a skip with that reason, not a pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from qbench.registry import KINDS

#: ``{kind: {rule name: check}}`` in registration order (the order of the items).
RULES: dict[str, dict[str, Callable[[Any, dict], None]]] = {kind: {} for kind in KINDS}


class ConformanceFailure(AssertionError):
    """A broken rule; the message names the rule and shows the offending values."""


def rule(kind: str, name: str):
    """Register the decorated ``check(entry, env)`` as rule ``name`` of ``kind`` plugins."""

    def deco(fn):
        RULES[kind][name] = fn
        return fn

    return deco


def fail(rule_name: str, msg: str) -> None:
    """Raise the failure of rule ``rule_name``, ``msg`` saying what broke it."""
    raise ConformanceFailure(f"rule {rule_name!r} broken: {msg}")


def show(t: torch.Tensor, n: int = 6) -> str:
    """The first ``n`` values of ``t``, rounded, for a failure message."""
    return str([round(float(v), 5) for v in t.reshape(-1)[:n]])
