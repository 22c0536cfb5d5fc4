"""The pure core of ``fleet report``: telemetry payloads in, rows and an HTML page out.

- ``telemetry``  parse and validate an agent's ``telemetry`` payload, decode its DDSketches
- ``aggregate``  merge payloads exactly into rows by site/node/model/version/priority, plus a total
- ``render``     rows for ``-o table|json|yaml``, a JSON document, a self-contained HTML page with SVG charts

No I/O: the CLI reads stored reports and writes what these functions return.
"""

from hub.report.aggregate import DEFAULT_BY, DIMENSIONS, Report, Row, Skipped, build_report
from hub.report.render import render_html, table_rows, to_json
from hub.report.telemetry import PayloadError, Telemetry, parse_payload

__all__ = [
    "DEFAULT_BY",
    "DIMENSIONS",
    "PayloadError",
    "Report",
    "Row",
    "Skipped",
    "Telemetry",
    "build_report",
    "parse_payload",
    "render_html",
    "table_rows",
    "to_json",
]
