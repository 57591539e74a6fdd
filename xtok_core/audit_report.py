"""The audit report as Markdown and as a self-contained printable HTML page (`AuditReport.to_markdown`,
`.to_html`); the JSON form and the audit itself are in audit.py."""

from __future__ import annotations

import html
import re

from .audit import AuditReport, Category, pct
from .display import visible


def _sections(r: AuditReport, max_rows: int | None):
    """What every renderer shows, in order: (category, rows shown, rows left out) per critical category
    that has unmatched tokens; rows heaviest in the corpus first, then by id."""
    for cat in r.categories.values():
        if not cat.critical or not cat.unmatched:
            continue
        rows = sorted((r.rows[i] for i in cat.unmatched), key=lambda x: (-(x.occurrences or 0), x.student_id))
        shown = rows if max_rows is None else rows[:max_rows]
        yield cat, shown, len(rows) - len(shown)


def _verdict(cat: Category, threshold: float) -> str:
    if not cat.critical:
        return "not critical"
    if cat.coverage is None:
        return "no tokens"
    return "below threshold" if cat.coverage < threshold else "ok"


def _teacher_sentence(r: AuditReport) -> str:
    ts = r.teacher_side
    share = ts.unreachable / ts.tokens if ts.tokens else None
    out = (f"{ts.unreachable:,} of {r.teacher.name}'s {ts.tokens:,} regular tokens ({pct(share)}) have an all-zero column "
           f"in W: no student row reaches them, so P-KL can never put probability on them.")
    if ts.unreachable_share is not None:
        out += (f" On the corpus they are {pct(ts.unreachable_share)} of the teacher's tokens "
                f"({ts.unreachable_occurrences:,} of {ts.corpus_tokens:,}).")
    return out


def _corpus_sentence(r: AuditReport) -> str:
    c = r.corpus
    if c is None:
        return "none (vocabulary coverage only)"
    # the default name is the word "corpus" itself, which the line's label already says
    named = "" if c.name in ("", "corpus") else f"{c.name}: "
    return (f"{named}{c.texts:,} texts, {c.characters:,} characters, {c.student_tokens:,} student tokens, "
            f"{c.teacher_tokens:,} teacher tokens (sha256 {c.sha256[:12]})")


def _md_code(text: str) -> str:
    v = visible(text).replace("|", "\\|")
    return f"`` {v} ``" if "`" in v else f"`{v}`"


def render_markdown(r: AuditReport, max_rows: int | None = 100) -> str:
    L = [f"# Coverage audit: {r.student.name} → {r.teacher.name}", "",
         f"**Recommendation: {r.recommendation}.** {r.reason}", "",
         "| | student | teacher |", "|---|---|---|",
         f"| tokenizer | {r.student.name} | {r.teacher.name} |",
         f"| family | {r.student.family} | {r.teacher.family} |",
         f"| vocabulary | {r.student.vocab_size:,} | {r.teacher.vocab_size:,} |",
         f"| sha256 | `{r.student.sha256}` | `{r.teacher.sha256}` |", "",
         f"- W sha256: `{r.w_sha256}`", f"- threshold: {pct(r.threshold)} (coverage = exact-matched / student tokens in the category)",
         f"- corpus: {_corpus_sentence(r)}", f"- xtok {r.xtok_version}"]
    L += [f"- **note:** {n}" for n in r.notes]
    L += ["", "## Categories", "",
          "| category | critical | student tokens | exact in teacher | coverage |" + (" corpus-weighted |" if r.corpus else "") + " verdict |",
          "|---|---|---:|---:|---:|" + ("---:|" if r.corpus else "") + "---|"]
    for c in r.categories.values():
        w = "" if r.corpus is None else f" {pct(c.weighted_coverage)}" + (f" of {c.occurrences:,}" if c.occurrences else "") + " |"
        L.append(f"| {c.name} | {'yes' if c.critical else 'no'} | {c.total:,} | {c.matched:,} | {pct(c.coverage)} |{w} "
                 f"{_verdict(c, r.threshold)} |")
    L += [""] + [f"- **{c.name}**: {c.definition}" for c in r.categories.values()]
    L += ["", "## Teacher tokens no student row reaches", "", _teacher_sentence(r)]
    if r.teacher_side.examples:
        L += ["", "Examples: " + ", ".join(_md_code(x) for x in r.teacher_side.example_texts)]
    L += ["", "## Unmatched critical tokens and their W rows"]
    for cat, shown, left in _sections(r, max_rows):
        L += ["", f"### {cat.name} ({len(cat.unmatched):,} unmatched)", "",
              "| student id | token | W row kind | teacher pieces: weight | corpus count |", "|---:|---|---|---|---:|"]
        for row in shown:
            pieces = ", ".join(f"{_md_code(p.text)} #{p.teacher_id}: {p.weight:.4f}" for p in row.pieces)
            occ = "" if row.occurrences is None else f"{row.occurrences:,}"
            L.append(f"| {row.student_id} | {_md_code(row.text)} | {row.kind} | {pieces} | {occ} |")
        if left:
            L += ["", f"… and {left:,} more (the JSON report lists them all)."]
    return "\n".join(L) + "\n"


_CSS = """
:root { --ink: #1d232b; --muted: #5d6670; --line: #d6dbe1; --bad: #b3261e; --good: #1e7b34; --bar: #3b6fb6; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); max-width: 1100px;
       margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin-top: 1.4rem; }
.muted { color: var(--muted); }
.verdict { border: 2px solid var(--line); border-left: 8px solid var(--good); border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.verdict.pkl { border-left-color: var(--bad); }
.verdict .label { font-size: 1.5rem; font-weight: 700; margin-right: .6rem; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: .88em/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f4f5f7; padding: 0 .2em;
       border-radius: 3px; white-space: pre; }
.bar { display: block; width: 100%; max-width: 80px; min-width: 36px; height: .6em; background: #e7eaee; margin: .3em 0 .1em; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.below { color: var(--bad); font-weight: 600; } .ok { color: var(--good); }
.piece { white-space: nowrap; margin-right: .6em; }
.hash { font-size: .8em; word-break: break-all; }
@media print {
  html { font-size: 9pt; } body { margin: 0; padding: 0; max-width: none; font-size: 10pt; }
  th, td { padding: .15rem .3rem; }
  h2, h3 { page-break-after: avoid; } tr, .verdict { page-break-inside: avoid; } thead { display: table-header-group; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _h(x) -> str:
    return html.escape(str(x), quote=True)


def _h_prose(text: str) -> str:
    """Escaped text with its `backtick` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _h(text))


def _h_code(text: str) -> str:
    return f"<code>{_h(visible(text))}</code>"


def _bar(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f'<span class="bar"><span style="width:{100 * x:.1f}%"></span></span>{pct(x)}'


def render_html(r: AuditReport, max_rows: int | None = 100) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets) that prints well."""
    title = f"Coverage audit: {r.student.name} → {r.teacher.name}"
    P = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_h(title)}</title>",
         f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head><body>",
         f"<h1>{_h(title)}</h1><p class=\"muted\">xtok {_h(r.xtok_version)} · threshold {pct(r.threshold)} · "
         f"coverage = exact-matched / student tokens in the category</p>",
         f"<div class=\"verdict {'pkl' if r.recommendation == 'P-KL' else 'hkl'}\"><span class=\"label\">{_h(r.recommendation)}</span>"
         f"{_h(r.reason)}</div>"]
    P += [f"<p><strong>Note:</strong> {_h(n)}</p>" for n in r.notes]
    P += ["<h2>Pair</h2><table><thead><tr><th></th><th>student</th><th>teacher</th></tr></thead><tbody>",
          f"<tr><th>tokenizer</th><td>{_h(r.student.name)}</td><td>{_h(r.teacher.name)}</td></tr>",
          f"<tr><th>family</th><td>{_h(r.student.family)}</td><td>{_h(r.teacher.family)}</td></tr>",
          f"<tr><th>vocabulary</th><td class=\"num\">{r.student.vocab_size:,}</td><td class=\"num\">{r.teacher.vocab_size:,}</td></tr>",
          f"<tr><th>sha256</th><td class=\"hash\">{_h(r.student.sha256)}</td><td class=\"hash\">{_h(r.teacher.sha256)}</td></tr>",
          f"<tr><th>W sha256</th><td class=\"hash\" colspan=\"2\">{_h(r.w_sha256)}</td></tr>",
          f"<tr><th>corpus</th><td colspan=\"2\">{_h(_corpus_sentence(r))}</td></tr></tbody></table>"]
    P += ["<h2>Categories</h2><table><thead><tr><th>category</th><th>definition</th><th>critical</th><th>student tokens</th>"
          "<th>exact in teacher</th><th>coverage</th>" + ("<th>corpus-weighted</th>" if r.corpus else "") +
          "<th>verdict</th></tr></thead><tbody>"]
    for c in r.categories.values():
        v = _verdict(c, r.threshold)
        weighted = f"<td>{_bar(c.weighted_coverage)}</td>" if r.corpus else ""
        P.append(f"<tr id=\"cat-{_h(c.name)}\"><td><strong>{_h(c.name)}</strong></td><td>{_h_prose(c.definition)}</td>"
                 f"<td>{'yes' if c.critical else 'no'}</td><td class=\"num\">{c.total:,}</td><td class=\"num\">{c.matched:,}</td>"
                 f"<td>{_bar(c.coverage)}</td>{weighted}<td class=\"{'below' if v == 'below threshold' else 'ok' if v == 'ok' else 'muted'}\">{v}</td></tr>")
    P.append("</tbody></table>")
    P += ["<h2>Teacher tokens no student row reaches</h2>", f"<p>{_h(_teacher_sentence(r))}</p>"]
    if r.teacher_side.examples:
        P.append("<p>Examples: " + " ".join(_h_code(x) for x in r.teacher_side.example_texts) + "</p>")
    P.append("<h2>Unmatched critical tokens and their W rows</h2>")
    any_rows = False
    for cat, shown, left in _sections(r, max_rows):
        any_rows = True
        P += [f"<h3>{_h(cat.name)} <span class=\"muted\">({len(cat.unmatched):,} unmatched)</span></h3>",
              "<table><thead><tr><th>student id</th><th>token</th><th>W row kind</th><th>teacher pieces: weight</th>"
              "<th>corpus count</th></tr></thead><tbody>"]
        for row in shown:
            pieces = "".join(f"<span class=\"piece\" title=\"teacher id {p.teacher_id}\">{_h_code(p.text)} {p.weight:.4f}</span>"
                             for p in row.pieces)
            occ = "" if row.occurrences is None else f"{row.occurrences:,}"
            P.append(f"<tr><td class=\"num\">{row.student_id}</td><td>{_h_code(row.text)}</td><td>{_h(row.kind)}</td>"
                     f"<td>{pieces}</td><td class=\"num\">{occ}</td></tr>")
        P.append("</tbody></table>")
        if left:
            P.append(f"<p class=\"muted\">… and {left:,} more (the JSON report lists them all).</p>")
    if not any_rows:
        P.append("<p>Every critical student token has an exact teacher match.</p>")
    P.append("</body></html>\n")
    return "\n".join(P)
