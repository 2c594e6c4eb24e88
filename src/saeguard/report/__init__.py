"""Report pages: one styled jinja2 template for every HTML report (sweep, comparison, demo).

``render`` holds the page model (:class:`Page`, :class:`Section`, :class:`Figure`,
:class:`Table`, :class:`Sample`) and the writers; ``figures`` the shared plots
(matplotlib, Agg); ``demo_page`` the demo's page. This package imports only the
leaf modules (``io``, ``errors``, ``config``) so runs/ and the demo can use it.
"""

from saeguard.report.render import (
    Figure,
    Link,
    Page,
    Sample,
    Section,
    Table,
    Tokens,
    percent_with_n,
    render_html,
    render_markdown,
    with_n,
    write_page,
)

__all__ = [
    "Figure",
    "Link",
    "Page",
    "Sample",
    "Section",
    "Table",
    "Tokens",
    "percent_with_n",
    "render_html",
    "render_markdown",
    "with_n",
    "write_page",
]
