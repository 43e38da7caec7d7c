"""The report's sections as HTML fragments and tables, and the self-contained page."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Section:
    """One part of the page: a title, HTML fragments in order, and its tables (written as CSV)."""

    key: str
    title: str
    parts: list[str] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    seconds: float = 0.0

    def text(self, s: str) -> None:
        self.parts.append(f"<p>{html.escape(s)}</p>")

    def table(self, name: str, df: pd.DataFrame, *, caption: str | None = None, max_rows: int = 20) -> None:
        self.tables[name] = df
        shown = df.head(max_rows)
        more = (
            f" (first {max_rows} of {len(df)} rows; all in tables/{name}.csv)" if len(df) > max_rows else ""
        )
        cap = f"<figcaption>{html.escape(caption or name)}{html.escape(more)}</figcaption>"
        body = shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="tbl")
        self.parts.append(f"<figure>{cap}{body}</figure>")

    def figure(self, fig, caption: str) -> None:
        from mechheads.viz import figure_to_html

        self.parts.append(
            f"<figure>{figure_to_html(fig, alt=caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)


@dataclass
class Report:
    """What :func:`build_report` wrote: the page, the CSV folder, and every section's tables."""

    out_dir: Path
    html_path: Path
    sections: list[Section]

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {f"{s.key}/{k}": v for s in self.sections for k, v in s.tables.items()}


# ----- page --------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1em 0} figcaption{font-size:.9em;color:#555;margin:.3em 0}
table.tbl{border-collapse:collapse;font-size:.85em} table.tbl td,table.tbl th{padding:2px 8px;border-bottom:1px solid #eee}
img{max-width:100%} nav a{margin-right:1em} .meta{color:#666;font-size:.9em}
"""


def render_page(title: str, sections: list[Section], meta: str = "") -> str:
    """The self-contained page (no external resources) for finished sections."""
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
        for s in sections
    )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="meta">{html.escape(meta)}</p><nav>{nav}</nav>\n{body}\n</body></html>'
    )


__all__ = ["Section", "Report", "CSS", "render_page"]
