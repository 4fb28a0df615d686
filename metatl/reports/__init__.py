"""Reports of runs and evaluations: ``report.md`` with the result tables, and PNG plots.

The plots need matplotlib, an optional dependency (``pip install 'metatl[plots]'``); without
it the reports are written without them.
"""

from metatl.reports.markdown import render_run_report
from metatl.reports.plots import (
    matplotlib_available,
    plot_accuracy_vs_shots,
    plot_bars,
    plot_learning_curves,
    plot_method_bars,
)
from metatl.reports.report import write_run_report

__all__ = [
    "matplotlib_available",
    "plot_accuracy_vs_shots",
    "plot_bars",
    "plot_learning_curves",
    "plot_method_bars",
    "render_run_report",
    "write_run_report",
]
