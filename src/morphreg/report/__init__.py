"""Self-contained HTML reports of registration results."""
from morphreg.report.html import build_report

__all__ = ["build_report"]
