"""What came out: tables, variable-rate analysis, markdown report, plots, status.

This wing reads run directories (:mod:`qbench.results`) and never imports
:mod:`qbench.run`. Modules, one concept each:

* :mod:`~qbench.report.tables`: the results as read (each row's recipe role),
  metric columns, RD points and BD-rate tables;
* :mod:`~qbench.report.variable_rate`: variable-rate methods against separately
  trained models;
* :mod:`~qbench.report.references`: the run's curves against published ones;
* :mod:`~qbench.report.declared`: what plugins declare for the report;
* :mod:`~qbench.report.sections`: the markdown sections;
* :mod:`~qbench.report.document`: ``write_report``, the sections in order;
* :mod:`~qbench.report.plots`, :mod:`~qbench.report.status`,
  :mod:`~qbench.report.zoo` (the published points against measured ones).
"""

from qbench.report.document import Report, write_report
from qbench.report.references import reference_rows
from qbench.report.tables import bd_table, bd_table_text, load_results, rate_gaps
from qbench.report.variable_rate import variable_rate_rows

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
