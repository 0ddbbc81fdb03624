"""The job report: ``report.json`` (documented plain dict) and ``report.html`` with plots."""

from worker.report.report import (
    REPORT_FIELDS,
    SCHEMA_VERSION,
    build_report,
    channel_counts,
    layer_stats,
    render_html,
    versions,
    write_report,
)

__all__ = [
    "REPORT_FIELDS",
    "SCHEMA_VERSION",
    "build_report",
    "channel_counts",
    "layer_stats",
    "render_html",
    "versions",
    "write_report",
]
