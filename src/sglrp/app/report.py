"""The HTML report of ``sglrp reproduce``: one self-contained ``index.html``.

Every image is embedded as a base64 ``data:`` URI, so the page opens from disk with no
network and can be mailed as a single file. The page holds the comparison grids, the curve
plots, one table per measure with the best method marked (by the measure's direction), and a
plain-language summary written from the numbers in ``metrics.json``. ``summary.md`` beside
it has the same tables and summary as Markdown, for a README or a results file. The findings'
text is :mod:`sglrp.app.findings`, the comparison grids :mod:`sglrp.app.grids`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import write_text
from .findings import (
    EXPECTED_LABEL,
    SUBSETS,
    curve_means,
    digits,
    label,
    method_name,
    number,
    subset_best,
    summary_paragraphs,
)
from .plots import PLOTS

__all__ = ["render_html", "render_markdown", "winners_table", "write_report"]


def winners_table(data: Mapping[str, Any]) -> str:
    """HTML table: per measure the best method, runner-up, lead and SGLRP's rank."""
    rows = []
    for key, e in data["metrics"].items():
        if e.get("best") is None:
            continue
        d = digits(e)
        ru = e.get("runner_up")
        best = f"{html.escape(label(e['best']))} ({number(e['methods'][e['best']]['mean'], d)})"
        second = f"{html.escape(label(ru))} ({number(e['methods'][ru]['mean'], d)})" if ru else "-"
        lead = "clear" if e.get("clear") else "within noise"
        sg = "-"
        if "sglrp" in e["ranking"]:
            sg = f"{e['ranking'].index('sglrp') + 1} of {len(e['ranking'])}"
        mb = subset_best(e, "multi_object")
        multi = "-"
        if mb is not None:
            v = e["methods"][mb]["subsets"]["multi_object"]["mean"]
            multi = f"{html.escape(label(mb))} ({number(v, d)})"
        rows.append(
            f"<tr><td><a href='#{html.escape(key)}'>{html.escape(e['title'])}</a></td>"
            f"<td>{e['direction']}</td><td>{best}</td><td>{second}</td><td>{lead}</td>"
            f"<td>{sg}</td><td>{multi}</td></tr>"
        )
    return (
        "<table class='text'><thead><tr><th>measure</th><th>better</th><th>best</th>"
        "<th>runner-up</th><th>lead (paired 95 % CI)</th><th>SGLRP rank</th>"
        "<th>best on multi-object images</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _table(
    key: str, entry: Mapping[str, Any], methods: Sequence[str], names: Mapping[str, str]
) -> str:
    d = digits(entry)
    better = "higher" if entry["direction"] == "higher" else "lower"
    levels = entry.get("levels") or []
    show: list[int] = []
    if levels and key != "deletion" and key != "insertion":
        show = [
            i
            for i, lv in enumerate(levels)
            if len(levels) <= 10 or abs(round(lv * 10) - lv * 10) < 1e-9
        ]
    subsets = [
        (k, name)
        for k, name in SUBSETS
        if any(st.get("subsets", {}).get(k, {}).get("n") for st in entry["methods"].values())
    ]
    head = "<tr><th>method</th><th>mean [95 % CI]</th><th>n</th>"
    head += "".join(f"<th>{name}</th>" for _, name in subsets)
    head += "".join(f"<th>{html.escape(f'{levels[i]:g}')}</th>" for i in show) + "</tr>"
    sub_best = {k: subset_best(entry, k) for k, _ in subsets}
    best_level: dict[int, str] = {}
    for i in show:
        vals = {}
        for m in methods:
            curve = entry["methods"].get(m, {}).get("curve")
            if curve and curve[i]["mean"] is not None:
                vals[m] = curve[i]["mean"]
        if vals:
            pick = max if entry["direction"] == "higher" else min
            best_level[i] = pick(vals, key=vals.get)
    body = []
    for m in methods:
        st = entry["methods"].get(m)
        if st is None:
            continue
        is_best = m == entry.get("best")
        name = html.escape(names.get(m, label(m))) + (" &#9733;" if is_best else "")
        ci = f"{number(st['mean'], d)} [{number(st['low'], d)}, {number(st['high'], d)}]"
        cells = [f"<td>{name}</td>", f"<td>{ci}</td>", f"<td>{st['n']}</td>"]
        for k, _ in subsets:
            v = number(st.get("subsets", {}).get(k, {}).get("mean"), d)
            cells.append(f"<td class='best'>{v}</td>" if sub_best[k] == m else f"<td>{v}</td>")
        for i in show:
            c = st.get("curve", [None] * (i + 1))[i]
            v = number(c["mean"] if c else None, d)
            cells.append(
                f"<td class='best'>{v}</td>" if best_level.get(i) == m else f"<td>{v}</td>"
            )
        cls = " class='bestrow'" if is_best else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    body.extend(_expected_row(entry, [k for k, _ in subsets], show, d))
    note = f"{html.escape(entry['score'])}; {better} is better."
    if subsets:
        note += (
            " Subset columns: means over the units of images with that many classes, and for "
            "the second-class measures over units whose second class is in / not in the image."
        )
    chance = entry.get("random_expectation")
    if chance:
        note += f" {EXPECTED_LABEL}: {html.escape(chance['explanation'])}."
    if show:
        note += f" Columns on the right: mean at each {html.escape(entry['level_name'] or '')}."
    if entry.get("best") and entry.get("runner_up") and "best_vs_runner_up" in entry:
        diff = entry["best_vs_runner_up"]
        note += (
            f" Best minus runner-up ({html.escape(label(entry['runner_up']))}), paired over the "
            f"same units: {number(diff['mean'], d)} [{number(diff['low'], d)}, "
            f"{number(diff['high'], d)}]" + (" (clear)." if entry.get("clear") else " (not clear).")
        )
    return (
        f"<h3 id='{html.escape(key)}'>{html.escape(entry['title'])}</h3>"
        f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
        f"<p class='note'>{note}</p>"
    )


def _expected_row(
    entry: Mapping[str, Any], subsets: Sequence[str], show: Sequence[int], d: int
) -> list[str]:
    """The table row of a uniformly random map's expected score (none without a closed form).

    The extended pointing game's expectation is the same at every energy level."""
    chance = entry.get("random_expectation") or {}
    if chance.get("mean") is None:
        return []
    cells = [f"<td><i>{EXPECTED_LABEL}</i></td>", f"<td>{number(chance['mean'], d)}</td>"]
    cells.append(f"<td>{chance['n']}</td>")
    cells += [
        f"<td>{number(chance.get('subsets', {}).get(k, {}).get('mean'), d)}</td>" for k in subsets
    ]
    constant = entry.get("metric") == "extended_pointing_game"
    cells += [f"<td>{number(chance['mean'] if constant else None, d)}</td>" for _ in show]
    return [f"<tr class='expected'>{''.join(cells)}</tr>"]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1150px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
h3{margin-bottom:.3em}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
table.text td,table.text th{text-align:left}
th{background:#f2f2f2}tr.bestrow td:first-child{font-weight:bold}
td.best{font-weight:bold;background:#e8f4e8}
tr.expected td{color:#555;background:#fafafa}
.note{font-size:.85em;color:#555;margin-top:.2em}
.meta{color:#555;font-size:.9em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
.plots{display:grid;grid-template-columns:1fr 1fr;gap:1em}
.summary li{margin-bottom:.4em}
"""


def render_html(
    data: Mapping[str, Any],
    plots: Mapping[str, Path],
    grids: Sequence[tuple[Path, str]],
    title: str = "SGLRP reproduction report",
    seconds: float | None = None,
) -> str:
    """The report page as a string (images embedded as data URIs)."""
    methods = list(data["methods"])
    esc = html.escape
    acc = data.get("model_accuracy", {})
    acc_text = "; ".join(
        f"{k}-object images: top-1 among the present classes {number(v['top1'], 3)} "
        f"({v['images']} images)"
        for k, v in acc.items()
        if v.get("images")
    )
    settings = data.get("settings", {})
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p class='meta'>",
        f"Model <b>{esc(str(data.get('model')))}</b>; data <b>{esc(str(settings.get('data')))}"
        f"</b> ({data.get('n_images')} images, {data['n_units'].get('gt', 0)} image-target "
        f"units, {data['n_units'].get('second', 0)} second-target units); methods: "
        f"{esc(', '.join(method_name(data, m) for m in methods))}.",
    ]
    if acc_text:
        parts.append(f"<br>Classifier: {esc(acc_text)}.")
    empty = {m: k for m, k in data.get("empty_maps", {}).items() if k}
    if empty:
        total = data["n_units"].get("gt", 0)
        parts.append(
            "<br>Maps with no positive relevance (scored 0 in the extended pointing game and "
            "relevance mass): "
            + esc(", ".join(f"{label(m)} {k} of {total}" for m, k in empty.items()))
            + "."
        )
    if seconds is not None:
        timing = data.get("timing", {})
        text = f"<br>Generated {when} in {seconds:.0f} s"
        if timing.get("reused"):
            text += (
                f" ({timing['reused']} of {timing.get('batches')} batches were reused from an "
                "earlier, interrupted or identical run)"
            )
        parts.append(text + ".")
    parts.append("</p>")

    parts.append("<h2>Summary</h2><ul class='summary'>")
    for item in summary_paragraphs(data):
        head, sep, rest = item.partition(": ")
        nested = (
            "SGLRP wins",
            "SGLRP does not win",
            "Methods scoring worse than Random",
            "Methods worse than a uniformly random map's expected score",
            "On multi-object images alone (where an explanation must pick out the target "
            "among several objects) the winner changes",
        )
        if head in nested and sep and "; " in rest:
            subs = "".join(f"<li>{esc(x.rstrip('.'))}</li>" for x in rest.split("; "))
            parts.append(f"<li>{esc(head)}:<ul>{subs}</ul></li>")
        else:
            parts.append(f"<li>{esc(item)}</li>")
    parts.append("</ul>")
    parts.append(winners_table(data))

    if grids:
        parts.append("<h2>Explanations per target class</h2>")
        parts.append(
            "<p>Multi-object images, one row per class present in the image (every class is "
            "explained in turn). Maps show positive relevance summed over colour channels, "
            "each normalised to its own maximum (the paper's display).</p>"
        )
        for path, caption in grids:
            parts.append(
                f"<figure><img src='{_data_uri(path)}' alt='{esc(caption)}'>"
                f"<figcaption>{esc(caption)}</figcaption></figure>"
            )

    if plots:
        parts.append("<h2>Curves</h2><div class='plots'>")
        for key in PLOTS:
            if key in plots:
                entry = data["metrics"][key]
                parts.append(
                    f"<figure><img src='{_data_uri(Path(plots[key]))}' "
                    f"alt='{esc(entry['title'])}'><figcaption>{esc(entry['title'])}; "
                    f"shaded: 95 % interval; legend ranks by mean over the x range."
                    f"</figcaption></figure>"
                )
        parts.append("</div>")

    parts.append(
        "<h2>Tables</h2><p>&#9733; marks the best method of each measure (by its "
        "direction); a green cell the best at that level.</p>"
    )
    names = {m: method_name(data, m) for m in methods}
    for key, entry in data["metrics"].items():
        parts.append(_table(key, entry, methods, names))

    proto = data.get("protocol", {})
    parts.append("<h2>Protocol</h2><ul>")
    parts.append(
        "<li>Units: one per (image, class present) for every measure; patch masking is also "
        "measured on the model's second most probable class of each image.</li>"
    )
    for k, v in proto.items():
        parts.append(f"<li>{esc(k.replace('_', ' '))}: {esc(str(v))}</li>")
    parts.append(
        "<li>Intervals: mean &plusmn; 1.96 standard errors over units (NaN units, e.g. maps "
        "without positive relevance, are excluded and counted).</li>"
        "<li>Files: <a href='metrics.json'>metrics.json</a>, "
        "<a href='metrics.csv'>metrics.csv</a>, <a href='results.jsonl'>results.jsonl</a> "
        "(per-unit scores).</li></ul>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- Markdown

MARKDOWN_LEVELS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 1.0)
"""Energy levels shown in the Markdown table of a curve measured at energy levels."""


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_md_row(header), _md_row(["---"] * len(header)), *(_md_row(r) for r in rows)]


def _md_curve(entry: Mapping[str, Any], methods: Sequence[str]) -> list[str]:
    """Per-method means at some levels of a curve measure (all levels if at most 6)."""
    levels = list(entry["levels"])
    picks = [i for i, lv in enumerate(levels) if any(abs(lv - m) < 1e-9 for m in MARKDOWN_LEVELS)]
    if len(levels) <= 6 or not picks:
        picks = list(range(len(levels)))
    sign = "+" if entry["direction"] == "lower" else ""
    name = entry.get("level_name", "level").split()[-1]
    rows = []
    for m in methods:
        curve = curve_means(entry, m)
        if curve is None:
            continue
        rows.append([label(m), *(f"{curve[i]:{sign}.4f}" for i in picks)])
    return _md_table(["method", *(f"{name}={levels[i]:g}" for i in picks)], rows)


def render_markdown(data: Mapping[str, Any]) -> str:
    """``summary.md``: one table of every measure's means (best in bold), the curves at a few
    levels, and the plain-language summary of :func:`summary_paragraphs`."""
    methods = list(data["methods"])
    metrics = data["metrics"]
    lines = [f"# {data.get('model', 'model')}: comparison of {len(methods)} methods", ""]
    rows = []
    for e in metrics.values():
        d = digits(e)
        cells = []
        for m in methods:
            text = number(e["methods"].get(m, {}).get("mean"), d)
            cells.append(f"**{text}**" if m == e.get("best") else text)
        chance = (e.get("random_expectation") or {}).get("mean")
        rows.append([e["title"], e["direction"], *cells, number(chance, d)])
    names = [method_name(data, m) for m in methods]
    lines += _md_table(["measure", "better", *names, EXPECTED_LABEL], rows)
    n_units = data.get("n_units", {})
    lines += [
        "",
        f"Means over units, bold = best. {data.get('n_images', '?')} images; "
        + ", ".join(f"{v} {k} units" for k, v in n_units.items())
        + ". Confidence intervals: metrics.json and index.html.",
        "",
        f"{EXPECTED_LABEL}: what a uniformly random map is expected to score, from the ground "
        "truth of these units (n/a: no closed form, the Random column estimates it):",
        "",
        *(
            f"- {e['title']}: {e['random_expectation']['explanation']}."
            for e in metrics.values()
            if e.get("random_expectation")
        ),
    ]
    for e in metrics.values():
        if e.get("levels") and any("curve" in st for st in e["methods"].values()):
            if e.get("level_name", "").startswith("fraction"):
                continue  # deletion / insertion: the AUC above says it; curves are plotted
            lines += ["", f"{e['title']}, mean per {e.get('level_name', 'level')}:", ""]
            lines += _md_curve(e, methods)
    lines += ["", "## Summary", ""]
    for paragraph in summary_paragraphs(data):
        lines += [f"- {paragraph}"]
    return "\n".join(lines) + "\n"


def write_report(
    out: str | Path,
    data: Mapping[str, Any],
    grids: Sequence[tuple[Path, str]] = (),
    seconds: float | None = None,
) -> Path:
    """Write ``out/index.html`` (and ``out/summary.md``) from ``metrics.json`` data and the
    plots found in ``out``."""
    out = Path(out)
    plots = {k: out / name for k, (name, _, _) in PLOTS.items() if (out / name).is_file()}
    page = render_html(data, plots, grids, seconds=seconds)
    write_text(out / "summary.md", render_markdown(data))
    return write_text(out / "index.html", page)
