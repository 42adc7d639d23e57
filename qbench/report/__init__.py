"""What came out: tables, variable-rate analysis, markdown report, plots, status.

This wing reads run directories (:mod:`qbench.results`) and never imports
:mod:`qbench.run`. Modules, one concept each:

* :mod:`~qbench.report.tables`: the results as read (each row's recipe role),
  metric columns, RD points and BD-rate tables;
* :mod:`~qbench.report.variable_rate`: variable-rate methods against separately
  trained models;
* :mod:`~qbench.report.references`: the run's curves against published ones;
* :mod:`~qbench.report.pairwise`: every arm against the anchor and the others,
  seed by seed; :mod:`~qbench.report.paired`: the statistics over seeds
  (paired t-interval, sign agreement, verdict, minimum detectable effect);
* :mod:`~qbench.report.declared`: what plugins declare for the report;
* :mod:`~qbench.report.sections`: the markdown sections;
* :mod:`~qbench.report.document`: ``write_report``, the sections in order;
* :mod:`~qbench.report.plots`, :mod:`~qbench.report.status`,
  :mod:`~qbench.report.zoo` (the published points against measured ones);
* :mod:`~qbench.report.published`: published points against published points
  (a paper's curve against the models it is compared with);
* :mod:`~qbench.report.summary`: ``qbench summarize``, the runs of a results folder
  in brief (results/README.md's generated part).
"""

import importlib as _importlib
from typing import Any

#: ``{public name: module}``, imported on first use: ``qbench status`` reads a run
#: directory without pandas, matplotlib or scipy.
_LAZY = {
    "Report": "document",
    "write_report": "document",
    "reference_rows": "references",
    "bd_table": "tables",
    "bd_table_text": "tables",
    "load_results": "tables",
    "rate_gaps": "tables",
    "variable_rate_rows": "variable_rate",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qbench.report' has no attribute {name!r}")
    return getattr(_importlib.import_module(f"qbench.report.{module}"), name)


__all__ = [
    "Report",
    "bd_table",
    "bd_table_text",
    "load_results",
    "rate_gaps",
    "reference_rows",
    "variable_rate_rows",
    "write_report",
]
