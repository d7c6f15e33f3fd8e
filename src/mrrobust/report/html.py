"""The report as one self-contained HTML file: the same sections as `report.md`, figures
embedded as PNG data URIs, so the file can be mailed or archived alone. Written from the
report's own structures (no Markdown converter needed): inline `**bold**` and `` `code` ``
are the only markup the report's text uses."""

from __future__ import annotations

import base64
import html
import re

from mrrobust.report.figures import Figure
from mrrobust.report.tables import Bullets, Section, Table

STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:0.6rem 0;font-size:0.85rem}th,td{border:1px solid #ccc;padding:2px 6px}
th{background:#f2f2f2}img{max-width:100%}code{background:#f4f4f4;padding:0 2px}"""


def inline(text: str) -> str:
    """Escape `text`, then `**x**` -> <strong>, `` `x` `` -> <code>."""
    text = html.escape(str(text), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def block_html(block) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{inline(c)}</th>" for c in block.header)
        rows = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in block.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (f'<figure><img alt="{html.escape(block.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{inline(block.title)}</figcaption></figure>")
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{inline(item)}</li>" for item in block.items) + "</ul>"
    return "".join(f"<p>{inline(paragraph)}</p>" for paragraph in str(block).split("\n\n") if paragraph.strip())


def render(title: str, sections: list[Section]) -> str:
    """The whole report as one HTML document."""
    body = [f"<h1>{inline(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{inline(section.title)}</h2>")
        body += [block_html(block) for block in section.blocks]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
