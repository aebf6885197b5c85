"""What an evaluation's numbers say: plain-language findings and number formatting.

Everything here reads the ``metrics.json`` content (:func:`sglrp.app.summary.metrics_document`)
and returns text, for the HTML report and ``summary.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .config import method_label as label

__all__ = [
    "EXPECTED_LABEL",
    "SUBSETS",
    "curve_means",
    "digits",
    "label",
    "method_name",
    "number",
    "subset_best",
    "summary_paragraphs",
]

#: Subsets of units reported beside the pooled mean, in table order: by the number of classes
#: in the unit's image, and, for the second-class measures, whether that class is in the
#: image (masking a class that is absent says little about class discrimination).
SUBSETS = (
    ("single_object", "1 class"),
    ("two_classes", "2 classes"),
    ("three_classes", "3+ classes"),
    ("multi_object", "2+ classes"),
    ("second_present", "2nd class present"),
    ("second_absent", "2nd class absent"),
)

#: Name of the row (column) of a uniformly random map's expected score in the tables.
EXPECTED_LABEL = "Random, expected"


def number(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def method_name(data: Mapping[str, Any], method: str) -> str:
    """A method's label with the layer it used (``"Relevance-CAM @ layer4"``) when
    ``metrics.json`` names one (``method_layers``)."""
    layer = data.get("method_layers", {}).get(method)
    return f"{label(method)} @ {layer}" if layer else label(method)


def digits(entry: Mapping[str, Any]) -> int:
    means = [abs(s["mean"]) for s in entry["methods"].values() if s["mean"] is not None]
    biggest = max(means, default=1.0)
    if biggest >= 10:
        return 1
    if biggest < 0.01:
        return 5
    return 3


def _ranges(levels: Sequence[float], mask: Sequence[bool], fmt: str = "{:g}") -> str:
    """``0.05-0.3, 0.8-1`` style text of the levels where ``mask`` holds."""
    parts, start = [], None
    for i, ok in enumerate([*mask, False]):
        if ok and start is None:
            start = i
        elif not ok and start is not None:
            a, b = levels[start], levels[i - 1]
            parts.append(fmt.format(a) if start == i - 1 else f"{fmt.format(a)}-{fmt.format(b)}")
            start = None
    return ", ".join(parts)


def curve_means(entry: Mapping[str, Any], method: str) -> list[float] | None:
    st = entry["methods"].get(method)
    if not st or "curve" not in st:
        return None
    return [math.nan if c["mean"] is None else c["mean"] for c in st["curve"]]


def _compare_curves(
    entry: Mapping[str, Any], a: str, b: str
) -> tuple[list[float], list[bool]] | None:
    """Levels and where ``a`` is better than ``b`` (by direction) at each level."""
    ca, cb = curve_means(entry, a), curve_means(entry, b)
    if ca is None or cb is None or not entry.get("levels"):
        return None
    higher = entry["direction"] == "higher"
    better = [(x > y) if higher else (x < y) for x, y in zip(ca, cb, strict=True)]
    return list(entry["levels"]), better


def summary_paragraphs(data: Mapping[str, Any]) -> list[str]:
    """Plain-language findings written from ``metrics.json``; each item one paragraph (text)."""
    metrics = data["metrics"]
    methods = data["methods"]
    out: list[str] = []
    wins: dict[str, list[str]] = {m: [] for m in methods}
    for entry in metrics.values():
        if entry.get("best") is not None:
            wins[entry["best"]].append(entry["title"])
    ranked = sorted(methods, key=lambda m: -len(wins[m]))
    total = sum(len(v) for v in wins.values())
    tally = ", ".join(f"{label(m)} {len(wins[m])}" for m in ranked if wins[m])
    out.append(f"Wins per method over {total} measures: {tally or 'none'}.")

    if "sglrp" in methods:
        lost = [e for e in metrics.values() if e.get("best") not in (None, "sglrp")]
        won = [e for e in metrics.values() if e.get("best") == "sglrp"]
        if won:
            out.append(
                "SGLRP wins: " + "; ".join(e["title"] for e in won) + "."
                if len(won) < len(metrics)
                else "SGLRP wins every measure."
            )
        else:
            out.append("SGLRP does not win any measure.")
        if lost:
            parts = []
            for e in lost:
                rank = e["ranking"].index("sglrp") + 1 if "sglrp" in e["ranking"] else None
                d = digits(e)
                parts.append(
                    f"{e['title']} (best {label(e['best'])} "
                    f"{number(e['methods'][e['best']]['mean'], d)}, SGLRP "
                    f"{number(e['methods']['sglrp']['mean'], d)}, rank {rank} of "
                    f"{len(e['ranking'])})"
                )
            out.append("SGLRP does not win: " + "; ".join(parts) + ".")
    multi_wins = []
    for e in metrics.values():
        mb = subset_best(e, "multi_object")
        if mb is not None and mb != e.get("best"):
            multi_wins.append(f"{e['title']}: {label(mb)} (overall: {label(e['best'])})")
    if multi_wins:
        out.append(
            "On multi-object images alone (where an explanation must pick out the target "
            "among several objects) the winner changes: " + "; ".join(multi_wins) + "."
        )
    out.extend(_paper_checks(metrics, methods))
    below = []
    for e in metrics.values():
        chance = (e.get("random_expectation") or {}).get("mean")
        if chance is None:
            continue
        worse = [
            m
            for m in methods
            if m != "random"
            and e["methods"].get(m, {}).get("mean") is not None
            and (
                e["methods"][m]["mean"] < chance
                if e["direction"] == "higher"
                else e["methods"][m]["mean"] > chance
            )
        ]
        if worse:
            d = digits(e)
            names = ", ".join(f"{label(m)} {number(e['methods'][m]['mean'], d)}" for m in worse)
            below.append(f"{e['title']} (chance {number(chance, d)}: {names})")
    if below:
        out.append(
            "Methods worse than a uniformly random map's expected score: " + "; ".join(below) + "."
        )
    if "random" in methods:
        first, behind = [], []
        for e in metrics.values():
            ranking = e.get("ranking") or []
            if not ranking or "random" not in ranking:
                continue
            if ranking[0] == "random":
                first.append(e["title"])
                continue
            losers = ranking[ranking.index("random") + 1 :]
            if losers:
                names = ", ".join(label(m) for m in losers)
                behind.append(f"{e['title']} ({names})")
        if first:
            out.append(
                "The Random baseline ranks first on: "
                + "; ".join(first)
                + ". On these measures no method beats chance here; read them with care."
            )
        if behind:
            out.append("Methods scoring worse than Random: " + "; ".join(behind) + ".")
    return out


def _paper_checks(metrics: Mapping[str, Any], methods: Sequence[str]) -> list[str]:
    """Compare with the SGLRP paper's claims where the measures are present."""
    out = []
    epg = metrics.get("extended_pointing_game")
    if epg and "sglrp" in methods and "guided_gradcam" in methods:
        cmp = _compare_curves(epg, "sglrp", "guided_gradcam")
        if cmp:
            levels, better = cmp
            if all(better):
                where = "at every energy level"
            elif not any(better):
                where = "at no energy level"
            else:
                where = f"at E = {_ranges(levels, better)}"
            out.append(
                f"Pointing game curve: SGLRP's pointing accuracy is above Guided Grad-CAM's "
                f"{where} (paper: SGLRP overtakes Guided Grad-CAM for E >= 0.67)."
            )
    for key, what in (
        ("patch_masking", "ground-truth target"),
        ("patch_masking_second", "second most probable target"),
    ):
        e = metrics.get(key)
        if not e or "sglrp" not in methods:
            continue
        parts = []
        for other in ("lrp", "clrp", "guided_gradcam"):
            if other not in methods:
                continue
            cmp = _compare_curves(e, "sglrp", other)
            if not cmp:
                continue
            levels, better = cmp
            if all(better):
                where = "at every patch size"
            elif not any(better):
                where = "at no patch size"
            else:
                where = "at p = " + ", ".join(
                    f"{lv:g}" for lv, ok in zip(levels, better, strict=True) if ok
                )
            parts.append(f"more than {label(other)} {where}")
        if parts:
            out.append(
                f"Patch masking ({what}): SGLRP's maximum lowers the target probability "
                + "; ".join(parts)
                + " (paper: more than LRP and CLRP at every p)."
            )
    return out


def subset_best(entry: Mapping[str, Any], subset: str) -> str | None:
    """Best method (by direction) over the units of one subset, or None without data."""
    means = {
        m: st.get("subsets", {}).get(subset, {}).get("mean") for m, st in entry["methods"].items()
    }
    means = {m: v for m, v in means.items() if v is not None}
    if not means:
        return None
    pick = max if entry["direction"] == "higher" else min
    return pick(means, key=means.get)
