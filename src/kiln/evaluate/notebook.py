"""HTML for notebooks: what `_repr_html_` of a run, an evaluation, a predictor, a comparison or
a study shows in Jupyter. Fragments, not pages: a heading, tables and inlined PNGs, every text
escaped, no scripts and no external files (they survive being saved in the .ipynb)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

STYLE = (
    "<style>.kiln-view table{border-collapse:collapse;margin:.3rem 0 .8rem}"
    ".kiln-view th,.kiln-view td{padding:.15rem .6rem;border-bottom:1px solid #e5e5e5;"
    "text-align:left}.kiln-view td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".kiln-view img{max-width:100%}.kiln-view .sub{color:#666;font-size:.9em}</style>"
)


def view(title: str, *parts: str, subtitle: str = "") -> str:
    """A titled block of HTML parts (the empty ones left out)."""
    sub = f'<p class="sub">{escape(subtitle)}</p>' if subtitle else ""
    body = "".join(p for p in parts if p)
    return f'{STYLE}<div class="kiln-view"><h3>{escape(title)}</h3>{sub}{body}</div>'


def key_values(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(
        f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
        for k, v in items
        if v is not None
    )
    return f"<table>{rows}</table>" if rows else ""


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric_from: int = 1) -> str:
    """Cells escaped; columns from `numeric_from` on right-aligned."""
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(str(c))}</td>' if i >= numeric_from
            else f"<td>{escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def number(value: Any, percent: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if percent:
        return f"{value:.2%}"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def scalars(result: dict[str, Any], skip: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """The plain numbers of a result dict (eval-<split>.json), in its order."""
    return [
        (k, v)
        for k, v in result.items()
        if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]


def png(data: bytes | str | Path, alt: str) -> str:
    """An <img> with the PNG inlined as a data: URI."""
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{escape(alt)}">'


def figure_png(fig, dpi: int = 90) -> bytes:
    """A matplotlib Figure as PNG bytes (no file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()
