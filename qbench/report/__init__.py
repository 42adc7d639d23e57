"""What came out: tables, variable-rate analysis, markdown report, plots, status.

This wing reads run directories (:mod:`qbench.results`) and never imports
:mod:`qbench.run`.
"""

from qbench.report.build import (
    bd_table,
    bd_table_text,
    load_results,
    rate_gaps,
    reference_rows,
    variable_rate_rows,
    write_report,
)

__all__ = [
    "bd_table",
    "bd_table_text",
    "load_results",
    "rate_gaps",
    "reference_rows",
    "variable_rate_rows",
    "write_report",
]
