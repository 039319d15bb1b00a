"""The evaluation report (`m2f-evaluate report=true`): per-image scores, charts and one
self-contained HTML page. Framework-free; `callbacks.ReportWriter` drives it during a test."""

from .collect import ReportCollector
from .page import write_report

__all__ = ["ReportCollector", "write_report"]
