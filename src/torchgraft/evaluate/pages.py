"""The pieces of torchgraft's self-contained HTML pages (report.html, the doctor's review page).

A page is one file: images embedded as data URIs, styles inline, no script, so it opens
offline in any browser and can be mailed as it is. Every value that came from outside (a
class name, a file name) goes through `escape`.
"""

from __future__ import annotations

import base64
import html
from typing import Any

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5em;
       color: #1d1d1f; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.muted { color: #666; } .cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.average td { font-style: italic; background: #f6f6f6; }
img { max-width: 100%; } td.diagonal { background: #e3efff; font-weight: bold; }
"""


def document(title: str, body: str, style: str = "") -> str:
    """A whole page: `title` as its title and heading, then `body` (HTML); `style` adds to
    STYLE."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}{style}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}</body></html>\n"
    )


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def section(title: str, body: str) -> str:
    anchor = "section-" + title.lower().replace(" ", "-")
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{body}</section>'


def table(headers: list[str], rows: list[list[Any]], element_id: str = "") -> str:
    """A table of plain values, each escaped."""
    cells = [[escape(cell) for cell in row] for row in rows]
    return markup_table(headers, cells, element_id)


def markup_table(headers: list[str], rows: list[list[str]], element_id: str = "") -> str:
    """A table whose cells are HTML already (thumbnails, marks): the caller escapes values."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    attribute = f' id="{escape(element_id)}"' if element_id else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
