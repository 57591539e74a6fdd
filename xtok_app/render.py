"""How tokens look on screen: visible whitespace, byte pieces as text, colours by id.

Pure functions that return strings (HTML) and plotly figures; no streamlit import, so tests can
check what a page will show without a browser.
"""

from __future__ import annotations

import re

from xtok_core.display import hex_bytes, token_label, visible  # noqa: F401 (the one glyph set)

_GOLDEN = 0.6180339887498949


# Characters that Markdown (and its math extension) would act on, as HTML character references, so
# that a token such as `$`, `*` or `_` shows as itself inside st.markdown HTML.
_MARKDOWN_REFS = str.maketrans({c: f"&#{ord(c)};" for c in "$*_`\\~[]#|<>&\"'"})


def esc(text: str) -> str:
    """Text for an HTML block rendered through st.markdown: escaped for HTML and for Markdown."""
    return str(text).translate(_MARKDOWN_REFS)


def visible_bytes(b: bytes | None, name: str = "") -> str:
    """A token's bytes as readable text (`xtok_core.display.visible`: one glyph set everywhere)."""
    return visible(b, name)


_MD_SPECIAL = re.compile(r"([\\*_`$\[\]<>~|#{}])")


def md_text(text: str) -> str:
    """Text shown literally inside Markdown (st.warning, st.info, st.markdown) of one line: the
    characters that format (emphasis, code, maths, links, HTML, tables, strike-through) are
    backslash-escaped (CommonMark), so `a*b*c` is not italics and `$1$` not maths."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def colour(i: int, lightness: int = 85) -> str:
    """A stable pastel colour for id `i` (golden-ratio hue spacing keeps neighbours apart)."""
    hue = int(((i * _GOLDEN) % 1.0) * 360)
    return f"hsl({hue}, 70%, {lightness}%)"


CHIP_CSS = """
<style>
.xtok-chips{line-height:2.3;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.95rem}
.xtok-chip{padding:2px 4px;margin:0 2px 0 0;border-radius:4px;border:1px solid rgba(0,0,0,.12);white-space:pre}
.xtok-chip.faded{opacity:.35;text-decoration:line-through}
a.xtok-chip{color:inherit;text-decoration:none}
a.xtok-chip:hover{outline:2px solid #3b6fd8}
.xtok-chip.grey{background:#eee !important;color:#999}
.xtok-chip.disagree{box-shadow:inset 0 -3px 0 #d8593b}
.xtok-chip sub{font-size:.62rem;opacity:.6;margin-left:2px}
table.xtok-table{border-collapse:collapse;font-size:.92rem;margin:.3rem 0 .8rem 0}
table.xtok-table th,table.xtok-table td{border-bottom:1px solid rgba(128,128,128,.25);padding:4px 10px;text-align:left}
table.xtok-table td.num{text-align:right;font-variant-numeric:tabular-nums}
table.xtok-table td.piece{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
</style>
"""


def chips_html(tok, ids, colour_keys=None, *, show_ids: bool = False, css_class: str = "", faded=(), href=None,
               extra_class=None) -> str:
    """Tokens as coloured chips. `colour_keys[i]` picks chip i's colour (default: its token id);
    chips at the positions in `faded` are drawn faded and struck through (e.g. pieces W drops).
    `href(token_id)` makes each chip a link (same tab), e.g. to its row of W; `extra_class(i)` adds
    CSS classes to chip i (e.g. `grey`, `disagree`)."""
    keys = list(ids) if colour_keys is None else list(colour_keys)
    out = []
    for i, (tid, key) in enumerate(zip(map(int, ids), map(int, keys))):
        label = esc(token_label(tok, tid))
        title = esc(f"id {tid} · bytes {hex_bytes(tok.token_bytes[tid])}")
        sub = f"<sub>{tid}</sub>" if show_ids else ""
        cls = "xtok-chip faded" if i in faded else "xtok-chip"
        if extra_class is not None and extra_class(i):
            cls += " " + extra_class(i)
        style = f"background:{colour(key)}" if key >= 0 else ""
        if href is not None:
            out.append(f'<a class="{cls}" style="{style}" title="{title}" href="{esc(href(tid))}" target="_self">{label}{sub}</a>')
        else:
            out.append(f'<span class="{cls}" style="{style}" title="{title}">{label}{sub}</span>')
    return f'<div class="xtok-chips {css_class}">{"".join(out)}</div>'


def table_html(headers: list[str], rows: list[list], *, css_class: str = "", numeric: set[int] = frozenset(),
               mono: set[int] = frozenset(), links: dict | None = None) -> str:
    """A plain HTML table (its text is in the page, unlike a canvas data grid). `links[j](row)` makes
    column j's cell a link (same tab)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    links = links or {}
    for row in rows:
        cells = []
        for j, v in enumerate(row):
            cls = "num" if j in numeric else "piece" if j in mono else ""
            inner = esc(v)
            if j in links and (url := links[j](row)):
                inner = f'<a href="{esc(url)}" target="_self">{inner}</a>'
            cells.append(f'<td class="{cls}">{inner}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="xtok-table {css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def bipartite_figure(graph, student_group, teacher_group, student_name: str, teacher_name: str, *, limit: int = 160,
                     groups: tuple[int, int] | None = None):
    """The alignment's overlap graph (`Alignment.to_networkx()`) as a plotly figure: student tokens on
    top, teacher tokens below, each at its span's middle byte so a group's tokens sit above each
    other; nodes coloured by group. Only the first `limit` tokens of each side are drawn, or, with
    `groups=(lo, hi)`, the tokens of groups lo..hi (a window of the text)."""
    import plotly.graph_objects as go

    side_groups = {"student": student_group, "teacher": teacher_group}

    def keep(d) -> bool:
        if groups is None:
            return d["position"] < limit
        return groups[0] <= int(side_groups[d["side"]][d["position"]]) <= groups[1]

    nodes = {n: d for n, d in graph.nodes(data=True) if keep(d)}
    pos = {n: ((d["start"] + d["end"]) / 2, 1.0 if d["side"] == "student" else 0.0) for n, d in nodes.items()}
    ex, ey = [], []
    for a, b in graph.edges():
        if a in pos and b in pos:
            ex += [pos[a][0], pos[b][0], None]
            ey += [pos[a][1], pos[b][1], None]
    fig = go.Figure(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(120,120,120,.55)", width=1), hoverinfo="skip"))
    for side, text_at in (("student", "top center"), ("teacher", "bottom center")):
        side_nodes = [d for d in nodes.values() if d["side"] == side]
        group = [int(side_groups[side][d["position"]]) for d in side_nodes]
        fig.add_trace(go.Scatter(
            x=[(d["start"] + d["end"]) / 2 for d in side_nodes], y=[pos[(side, d["position"])][1] for d in side_nodes],
            mode="markers+text", name=side, text=[d["text"] for d in side_nodes], textposition=text_at,
            textfont=dict(family="monospace", size=11),
            marker=dict(size=13, color=[colour(g, 62) for g in group], line=dict(width=1, color="#555")),
            hovertext=[f"{side} #{d['position']} id {d['id']} {d['text']!r} bytes {d['start']}–{d['end']} group {g}"
                       for d, g in zip(side_nodes, group)], hoverinfo="text"))
    fig.update_layout(height=330, showlegend=False, margin=dict(l=10, r=10, t=30, b=30),
                      yaxis=dict(tickvals=[0, 1], ticktext=[teacher_name, student_name], range=[-0.5, 1.5], zeroline=False),
                      xaxis=dict(title="byte position in the text", zeroline=False))
    return fig
