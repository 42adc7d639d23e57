"""The plugin conformance suite, a pytest plugin (entry point ``pytest11``).

Inert unless ``--qbench-conformance`` is given; then it adds one test item per
(registered plugin x rule), with ids like ``conformance[myquant-eval_is_hard]``,
so that a failure names the plugin and the broken rule and ``pytest -n auto``
spreads the checks over workers::

    pytest --qbench-conformance                        # every registered plugin
    pytest --qbench-conformance --qbench-quantizer myquant -n auto
    pytest --qbench-conformance --qbench-backbone mycodec      # likewise dataset, metric, logger

With a ``--qbench-KIND NAME`` option only the named plugins are checked, and a
plugin that failed to load is reported as a warning rather than a failure
(it is not the one under test); given no test path on the command line, such a
run collects nothing else (the test files of the folder it runs in are not
its business).

The rules are the plugin contract of ``docs/plugins.md``, one module per kind (:mod:`.quantizer`,
:mod:`.backbone`, :mod:`.dataset`, :mod:`.metric`, :mod:`.logger`; the
registry in :mod:`._rules`); each check's docstring states its rule. A check
that cannot run here (no CUDA device, a quantizer declared non-differentiable,
a dtype this torch lacks on the CPU) is reported as a skip with its reason.
Each plugin problem the registry recorded (:class:`qbench.registry.Problem`,
by its ``kind``) shows up as one failing item with the error.
"""

from __future__ import annotations

import importlib

import pytest

from qbench.registry import KINDS

#: ``{public name: module}``: the rules load (with torch) on first use, never when pytest
#: merely starts with this plugin installed (``--qbench-conformance`` not given).
_LAZY = {
    **dict.fromkeys(("RULES", "ConformanceFailure", "rule"), "_rules"),
    **dict.fromkeys(("b_capabilities", "b_roundtrip", "b_routes"), "backbone"),
    **dict.fromkeys(("d_bad", "d_rgb"), "dataset"),
    **dict.fromkeys(("l_constructs", "l_inside", "l_lifecycle"), "logger"),
    **dict.fromkeys(("m_aggregations", "m_columns"), "metric"),
    **dict.fromkeys(
        (
            "q_backbone",
            "q_bins",
            "q_constructs",
            "q_cuda",
            "q_declares_options",
            "q_deterministic",
            "q_eval_is_hard",
            "q_forward_keeps_state",
            "q_gradients",
            "q_progress",
            "q_shape_dtype",
            "q_state_dict",
        ),
        "quantizer",
    ),
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qbench.conformance' has no attribute {name!r}")
    if name == "RULES":  # every kind's rules, not only those of the modules loaded so far
        return _rules()
    return getattr(importlib.import_module(f"qbench.conformance.{module}"), name)


def _rules():
    """The rule registry, every kind's rules registered (imports torch)."""
    for module in sorted(set(_LAZY.values())):
        importlib.import_module(f"qbench.conformance.{module}")
    from qbench.conformance._rules import RULES

    return RULES


__all__ = sorted(
    [
        "KINDS",
        "PROBLEM_RULES",
        "ConformanceItem",
        "ImportFailureItem",
        "ProblemItem",
        *_LAZY,  # the rules and the rule registry, imported on first use
    ]
)

#: ``{Problem.kind: (item rule name, what the plugin did)}``: the failing item of each
#: kind of plugin problem (an unknown kind counts as one that did not load).
PROBLEM_RULES = {
    "import": ("plugin_loads", "did not load"),
    "hook": ("hooks_run", "has a hook that was refused or raised"),
    "register": ("register_calls", "called register() wrongly"),
    "duplicate": ("unique_names", "registered a name that was taken"),
}


def _problem_rule(problem) -> tuple[str, str]:
    return PROBLEM_RULES.get(getattr(problem, "kind", ""), PROBLEM_RULES["import"])


def describe_problem(problem) -> str:
    """One line naming the plugin, its distribution, what it did and the registry's reason."""
    what = _problem_rule(problem)[1]
    return f"plugin {problem.plugin!r} ({problem.distribution}) {what}: {problem.reason}"


def pytest_addoption(parser):
    group = parser.getgroup("qbench", "qbench plugin conformance")
    group.addoption(
        "--qbench-conformance",
        action="store_true",
        default=False,
        help="check registered qbench plugins against the contract",
    )
    for kind in KINDS:
        group.addoption(
            f"--qbench-{kind}",
            action="append",
            default=[],
            metavar="NAME",
            help=f"only check this {kind} (repeatable; with any --qbench-KIND option only the "
            "named plugins are checked)",
        )


class ConformanceItem(pytest.Item):
    """One rule on one registered plugin."""

    def __init__(self, *, check, entry, rule_name, **kw):
        super().__init__(**kw)
        self.check, self.entry, self.rule_name = check, entry, rule_name
        self.add_marker(pytest.mark.qbench_conformance)

    def runtest(self):
        env = {"skipped": []}
        self.check(self.entry, env)
        if env["skipped"]:  # a part of the rule could not be checked here: not a pass
            pytest.skip("; ".join(env["skipped"]))

    def repr_failure(self, excinfo, style=None):
        from qbench.conformance._rules import ConformanceFailure

        if isinstance(excinfo.value, ConformanceFailure):
            e = self.entry
            return f"{e.kind} {e.name!r} (plugin {e.plugin!r}, {e.provider}): {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return "qbench-conformance", None, self.name


class ProblemItem(pytest.Item):
    """A plugin problem the registry recorded (import, hook, register call, duplicate name)."""

    def __init__(self, *, problem, **kw):
        super().__init__(**kw)
        self.problem = problem
        self.add_marker(pytest.mark.qbench_conformance)

    def runtest(self):
        from qbench.conformance._rules import ConformanceFailure

        raise ConformanceFailure(describe_problem(self.problem))

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value)

    def reportinfo(self):
        return "qbench-conformance", None, self.name


#: the name this item had when every problem it reported was an import failure
ImportFailureItem = ProblemItem


def _selecting(config) -> bool:
    return bool(config.getoption("--qbench-conformance")) and any(
        config.getoption(f"--qbench-{kind}") for kind in KINDS
    )


def pytest_ignore_collect(collection_path, config):
    """Checking named plugins with no test path given: collect no test file."""
    if _selecting(config) and config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "qbench_conformance: a qbench plugin conformance check")


def _problem_items(session, problems) -> list[ProblemItem]:
    """One failing item per problem, ``conformance[PLUGIN-RULE]`` (numbered when repeated)."""
    items, seen = [], {}
    for problem in problems:
        base = f"{problem.plugin}-{_problem_rule(problem)[0]}"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        items.append(ProblemItem.from_parent(session, name=f"conformance[{name}]", problem=problem))
    return items


def _rule_items(session, registry, wanted: dict[str, list[str]]) -> list[ConformanceItem]:
    """One item per (registered plugin x rule of its kind); only the ``wanted`` names when
    any is given."""
    selecting = any(wanted.values())
    items = []
    for kind, rules in _rules().items():
        for entry in registry.entries(kind):
            if selecting and entry.name not in wanted[kind]:
                continue
            prefix = entry.name if kind == "quantizer" else f"{kind}:{entry.name}"
            for rule_name, check in rules.items():
                items.append(
                    ConformanceItem.from_parent(
                        session,
                        name=f"conformance[{prefix}-{rule_name}]",
                        check=check,
                        entry=entry,
                        rule_name=rule_name,
                    )
                )
    return items


def _check_wanted(plugins, wanted: dict[str, list[str]]) -> None:
    """A ``--qbench-KIND NAME`` that no plugin registered is a usage error that suggests close
    names and lists the plugin problems (the plugin may be one that did not load)."""
    from qbench.registry import unknown_name_message

    for kind, names in wanted.items():
        missing = set(names) - set(plugins.registry.names(kind))
        if not missing:
            continue
        message = unknown_name_message(kind, sorted(missing)[0], plugins.registry.names(kind))
        if plugins.problems:
            message += "; plugin problems: " + "; ".join(
                describe_problem(p) for p in plugins.problems
            )
        raise pytest.UsageError(message)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    if not config.getoption("--qbench-conformance"):
        return
    from qbench.plugins import get_plugins

    plugins = get_plugins()
    wanted = {kind: config.getoption(f"--qbench-{kind}") for kind in KINDS}
    new = []
    if any(wanted.values()):  # checking named plugins: another plugin's problem is not theirs
        config._qbench_warnings = [describe_problem(p) for p in plugins.problems]
    else:
        new += _problem_items(session, plugins.problems)
    new += _rule_items(session, plugins.registry, wanted)
    _check_wanted(plugins, wanted)
    items.extend(new)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """With ``--qbench-quantizer``, plugins that failed to load are reported, not failed."""
    for line in getattr(config, "_qbench_warnings", []):
        terminalreporter.write_line(f"qbench conformance warning: {line}", yellow=True)
