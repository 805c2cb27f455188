"""Reports on trained models: one HTML page of figures (PNG) an astronomer checks a model by.

>>> from deepfield.report import make_report
>>> make_report("runs/conv-ae", "data/galaxies", compare=["runs/pca"])  # doctest: +SKIP
PosixPath('runs/conv-ae/report/index.html')
"""

from deepfield.report.build import COLOUR_COLUMNS, make_report

__all__ = ["make_report", "COLOUR_COLUMNS"]
