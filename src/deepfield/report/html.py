"""A tiny HTML writer for the report: one self-contained page, figures as relative PNG files.

Everything user-supplied (paths, column names, catalog values) is escaped. The CSS is inline
so the page reads the same opened from disk, attached to an e-mail or served statically.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["Page", "table", "figure", "note", "definition_list", "fmt", "escape"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .6em 0 1em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-family: ui-monospace, Menlo, Consolas, monospace; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
figure { margin: 1em 0 1.6em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #444; margin-top: .3em; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; margin: .6em 0; }
.banner { background: #fdecea; border-left: 6px solid #c62828; padding: .5em .9em; margin: .6em 0;
          font-weight: 600; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1.2em; }
dt { font-weight: 600; } dd { margin: 0; }
footer { margin-top: 3em; font-size: .8em; color: #777; }
"""


def escape(value) -> str:
    """`value` as text safe inside HTML (also inside quoted attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A number with `digits` significant digits (what the tables show), or the value as text."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence], *, id: str | None = None,
          numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; cells are formatted with :func:`fmt` and escaped."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)
    out = [f'<table id="{escape(id)}">' if id else "<table>", "<tr>"]
    out += [f"<th>{escape(h)}</th>" for h in headers]
    out.append("</tr>")
    for row in rows:
        out.append("<tr>")
        for j, cell in enumerate(row):
            cls = ' class="num"' if j < len(numeric) and numeric[j] else ""
            out.append(f"<td{cls}>{escape(fmt(cell))}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def figure(src: str, caption: str, alt: str | None = None) -> str:
    """An image (a PNG file beside index.html) with its caption."""
    alt = alt or caption.split(". ")[0].split(": ")[0]
    return (f'<figure><img src="{escape(src)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def note(text: str) -> str:
    """A highlighted remark: a skipped figure, a store mismatch, a subsample."""
    return f'<p class="note">{escape(text)}</p>'


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    parts = ["<dl>"]
    for key, value in items:
        parts.append(f"<dt>{escape(key)}</dt><dd>{escape(fmt(value))}</dd>")
    parts.append("</dl>")
    return "".join(parts)


class Page:
    """Sections of HTML fragments, rendered to one page by :meth:`render`."""

    def __init__(self, title: str):
        self.title = title
        self.sections: list[tuple[str, list[str]]] = []
        self.banners: list[str] = []

    def banner(self, text: str) -> None:
        """A warning shown at the top of the page, above every section: the model is unusable
        in some way (a collapsed posterior, a prior worse than N(0, I), ...)."""
        self.banners.append(text)

    def section(self, heading: str) -> list[str]:
        """Start a section; returns the list to append its HTML fragments to."""
        body: list[str] = []
        self.sections.append((heading, body))
        return body

    def render(self, footer: str = "") -> str:
        parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                 f"<title>{escape(self.title)}</title><style>{_CSS}</style></head><body>",
                 f"<h1>{escape(self.title)}</h1>"]
        parts += [f'<p class="banner">Warning: {escape(text)}</p>' for text in self.banners]
        for heading, body in self.sections:
            anchor = "".join(c if c.isalnum() else "-" for c in heading.lower()).strip("-")
            parts.append(f'<h2 id="{escape(anchor)}">{escape(heading)}</h2>')
            parts.extend(body)
        if footer:
            parts.append(f"<footer>{escape(footer)}</footer>")
        parts.append("</body></html>\n")
        return "\n".join(parts)
