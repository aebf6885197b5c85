"""The page's event handlers: each turns the page's values and the tab's state into outputs.

The state of a browser tab is a plain dict held by a ``gr.State`` (Gradio keeps one copy
per session, so tabs never see each other's images, maps or files). It holds

* ``dir``: the tab's own folder under the server's temporary root (uploads of examples,
  ``sglrp explain`` outputs),
* ``image``: path, name, conversion notes and ground-truth boxes (in input pixels),
* ``shown``: the resized and cropped image the model saw (uint8 H x W x 3),
* ``order``: classes by decreasing probability,
* ``explained``: target, methods and maps of the last explanation,
* ``contrast``: the contrast view's maps.

Every handler catches the errors its input can cause and reports them in the status line
of the page; the server keeps serving.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from sglrp.methods import get
from sglrp.viz import draw_graph

from .backend import (
    CONTRAST_METHODS,
    Bundle,
    contrast_maps,
    critical_path_graph,
    explain_maps,
    model_input,
    predict,
)
from .inputs import (
    Upload,
    UploadError,
    boxes_in_input,
    draw_boxes,
    example,
    folder_images,
    read_upload,
)
from .pictures import figure_rgb, map_panel

__all__ = ["DEFAULT_LAYER", "Context"]

#: Gradio passes a live progress tracker to a parameter whose default is a ``gr.Progress``.
_PROGRESS = gr.Progress()

#: Layer dropdown entry meaning "each method's default layer".
DEFAULT_LAYER = "(method default)"


@dataclass
class Context:
    """What every handler of one server shares: the model, a temporary root, the folder."""

    bundle: Bundle
    root: Path
    folder: Path | None = None

    # ------------------------------------------------------------------ state

    def fresh(self) -> dict[str, Any]:
        """A new tab's state, with its own folder."""
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(parents=True, exist_ok=True)
        return {"dir": str(folder), "image": None, "explained": None, "contrast": None, "runs": 0}

    def ensure(self, state: dict[str, Any] | None) -> dict[str, Any]:
        """The tab's state, created on its first event."""
        return dict(state) if state else self.fresh()

    def class_label(self, index: int) -> str:
        return f"{index}: {self.bundle.names[index]}"

    def class_choices(self) -> list[tuple[str, int]]:
        return [(self.class_label(i), i) for i in range(self.bundle.num_classes)]

    # ------------------------------------------------------------------ inputs

    def upload(self, file: Any, state: dict | None, show_boxes: bool) -> tuple:
        """A file was uploaded: check it, classify it. Outputs: those of :meth:`_use`, then
        the emptied upload box (ready for the next file)."""
        state = self.ensure(state)
        if file is None:
            return (*self._unchanged(state, ""), gr.update())
        path = getattr(file, "name", file)
        try:
            upload = read_upload(path)
        except UploadError as err:
            return (*self._unchanged(state, f"⚠️ **Cannot use this file.** {err}"), None)
        return (*self._use(state, upload, show_boxes), None)

    def example(self, key: str | None, state: dict | None, show_boxes: bool) -> tuple:
        """A built-in example was picked."""
        state = self.ensure(state)
        if not key:
            return self._unchanged(state, "")
        try:
            upload = example(key, self.bundle.side, Path(state["dir"]) / "examples")
        except UploadError as err:
            return self._unchanged(state, f"⚠️ {err}")
        return self._use(state, upload, show_boxes)

    def folder_choices(self) -> list[str]:
        """File names offered from ``--folder``."""
        return [p.name for p in folder_images(self.folder)] if self.folder else []

    def from_folder(self, name: str | None, state: dict | None, show_boxes: bool) -> tuple:
        """A file of ``--folder`` was picked (only names listed in the folder are accepted)."""
        state = self.ensure(state)
        if not name or self.folder is None:
            return self._unchanged(state, "")
        files = {p.name: p for p in folder_images(self.folder)}
        if name not in files:
            return self._unchanged(state, f"⚠️ {name} is no longer in {self.folder}")
        try:
            upload = read_upload(files[name])
        except UploadError as err:
            return self._unchanged(state, f"⚠️ **Cannot use this file.** {err}")
        return self._use(state, upload, show_boxes)

    def _unchanged(self, state: dict, status: str) -> tuple:
        skip = gr.update()
        return (state, skip, skip, skip, skip, status, skip, skip, skip)

    def _use(self, state: dict, upload: Upload, show_boxes: bool) -> tuple:
        """Classify the image. Outputs: state, input picture, top-5 radio, target, contrast,
        status, maps picture, contrast picture, downloads."""
        s = self.bundle.settings
        try:
            pred = predict(self.bundle, upload.path)
        except (ValueError, RuntimeError) as err:
            return self._unchanged(state, f"⚠️ **The model failed on {upload.name}:** {err}")
        objects = boxes_in_input(upload.objects, upload.image.size, s.size, s.crop)
        state = {
            **state,
            "image": {
                "path": str(upload.path),
                "name": upload.name,
                "notes": upload.notes,
                "objects": objects,
                "size": list(upload.image.size),
            },
            "shown": pred.shown,
            "order": pred.order,
            "explained": None,
            "contrast": None,
        }
        top = pred.top(self.bundle.names)
        radio = gr.update(
            choices=[(f"{t['name']}  {100 * t['probability']:.1f}%", t["index"]) for t in top],
            value=top[0]["index"],
        )
        second = pred.order[1] if len(pred.order) > 1 else pred.order[0]
        notes = f" ({'; '.join(upload.notes)})" if upload.notes else ""
        status = (
            f"**{upload.name}**{notes}: {upload.image.size[0]}x{upload.image.size[1]}, "
            f"predicted **{top[0]['name']}** ({top[0]['probability']:.3f}) in "
            f"{pred.seconds:.2f} s. Choose a target and methods, then *Explain*."
        )
        return (
            state,
            self._input_picture(state, show_boxes),
            radio,
            gr.update(value=top[0]["index"]),
            gr.update(value=second),
            status,
            None,
            None,
            None,
        )

    def other_class(self, target: int | None, state: dict | None, contrast: int | None) -> Any:
        """The target changed: a contrast class equal to it moves to the most probable other."""
        if target is None or contrast is None or int(contrast) != int(target):
            return gr.update()
        order = (state or {}).get("order") or list(range(self.bundle.num_classes))
        return gr.update(value=next(i for i in order if i != int(target)))

    def _input_picture(self, state: dict, show_boxes: bool) -> np.ndarray | None:
        shown = state.get("shown")
        if shown is None:
            return None
        boxes = state["image"]["objects"] if show_boxes else []
        factor = max(1, 256 // max(shown.shape[:2]))
        return draw_boxes(np.repeat(np.repeat(shown, factor, 0), factor, 1), boxes, factor)

    # ------------------------------------------------------------------ maps

    def explain(
        self,
        state: dict | None,
        target: int | None,
        chosen: list[str] | None,
        rules: str,
        layer: str | None,
        positive: bool,
        opacity: float,
        show_boxes: bool,
        shared: bool,
        progress: Any = _PROGRESS,
    ) -> tuple:
        """Compute the chosen maps. Outputs: state, maps picture, downloads, status."""
        state = self.ensure(state)
        skip = gr.update()
        if not state.get("image"):
            return state, skip, skip, "⚠️ Upload an image or pick an example first."
        if target is None:
            return state, skip, skip, "⚠️ Choose a target class."
        if not chosen:
            return state, skip, skip, "⚠️ Choose at least one method."
        layer = None if layer in (None, "", DEFAULT_LAYER) else layer
        runs = int(state.get("runs", 0)) + 1
        stem = Path(state["image"]["name"]).stem or "image"
        out_dir = Path(state["dir"]) / f"run-{runs}" / stem
        labels = ", ".join(get(m).label for m in chosen)
        progress(0.1, desc=f"{labels} for {self.class_label(int(target))}")
        try:
            ex = explain_maps(
                self.bundle,
                state["image"]["path"],
                out_dir,
                chosen=list(chosen),
                target=int(target),
                rules=rules,
                layer=layer,
                positive=positive,
            )
        except (ValueError, RuntimeError, OSError) as err:
            return state, skip, skip, f"⚠️ **Explaining failed:** {_line(err)}"
        progress(0.9, desc="drawing")
        state = {
            **state,
            "runs": runs,
            "explained": {
                "target": int(target),
                "methods": list(chosen),
                "rules": rules,
                "maps": ex.maps,
            },
        }
        t = ex.summary["target"]
        status = (
            f"Explained **{state['image']['name']}** for **{t['name']}** (p = "
            f"{t['probability']:.3f}) with {labels} in {ex.seconds:.2f} s; computing the "
            "contrast view ..."
        )
        picture = self.maps_picture(state, positive, opacity, show_boxes, shared)
        return state, picture, [str(p) for p in ex.files], status

    def maps_picture(
        self, state: dict, positive: bool, opacity: float, show_boxes: bool, shared: bool
    ) -> np.ndarray | None:
        done = state.get("explained")
        if not done:
            return None
        columns = [(get(m).label, done["maps"][m]) for m in done["methods"]]
        return map_panel(
            state["shown"],
            columns,
            positive=positive,
            opacity=opacity,
            shared=shared,
            boxes=state["image"]["objects"] if show_boxes else None,
            row_titles=[f"target: {self.bundle.names[done['target']]}"],
        )

    def contrast(
        self,
        state: dict | None,
        contrast: int | None,
        rules: str,
        positive: bool,
        opacity: float,
        show_boxes: bool,
    ) -> tuple:
        """SGLRP and LRP for the target and the contrast class. Outputs: state, picture,
        status, the contrast class used."""
        state = self.ensure(state)
        skip = gr.update()
        done = state.get("explained")
        if not done:
            return state, skip, skip, skip
        target = done["target"]
        if contrast is None or int(contrast) == target:
            contrast = next(i for i in state["order"] if i != target)
        view = state.get("contrast")
        if view and (view["target"], view["contrast"], view["rules"]) == (target, contrast, rules):
            picture = self.contrast_picture(state, positive, opacity, show_boxes)
            return state, picture, skip, contrast
        try:
            x, _ = model_input(self.bundle, state["image"]["path"])
            same = done["rules"] == rules
            known = {m: done["maps"][m] for m in CONTRAST_METHODS if same and m in done["maps"]}
            result = contrast_maps(self.bundle, x, target, int(contrast), rules, known)
        except (ValueError, RuntimeError, OSError) as err:
            return state, skip, f"⚠️ **Contrast view failed:** {_line(err)}", skip
        state = {
            **state,
            "contrast": {
                "target": target,
                "contrast": int(contrast),
                "rules": rules,
                "maps": result.maps,
            },
        }
        status = (
            f"Explained **{state['image']['name']}** for **{self.bundle.names[target]}**; "
            f"contrast view against **{self.bundle.names[int(contrast)]}** in "
            f"{result.seconds:.2f} s."
        )
        picture = self.contrast_picture(state, positive, opacity, show_boxes)
        return state, picture, status, int(contrast)

    def contrast_picture(
        self, state: dict, positive: bool, opacity: float, show_boxes: bool
    ) -> np.ndarray | None:
        view = state.get("contrast")
        if not view:
            return None
        t, c = self.bundle.names[view["target"]], self.bundle.names[view["contrast"]]
        columns = []
        for method in CONTRAST_METHODS:
            label = get(method).label
            columns += [(f"{label}: {t}", view["maps"][method][0])]
            columns += [(f"{label}: {c}", view["maps"][method][1])]
        return map_panel(
            state["shown"],
            columns,
            positive=positive,
            opacity=opacity,
            shared=True,
            boxes=state["image"]["objects"] if show_boxes else None,
            rows=len(CONTRAST_METHODS),
            row_titles=[get(m).label for m in CONTRAST_METHODS],
        )

    def redraw(
        self, state: dict | None, positive: bool, opacity: float, show_boxes: bool, shared: bool
    ) -> tuple:
        """Display options changed: redraw without computing. Outputs: input, maps, contrast."""
        if not state or not state.get("image"):
            return gr.update(), gr.update(), gr.update()
        return (
            self._input_picture(state, show_boxes),
            self.maps_picture(state, positive, opacity, show_boxes, shared),
            self.contrast_picture(state, positive, opacity, show_boxes),
        )

    # ------------------------------------------------------------------ neurons

    def paths(
        self,
        state: dict | None,
        target: int | None,
        layer: str | None,
        graph_k: float,
        rules: str,
        progress: Any = _PROGRESS,
    ) -> tuple:
        """The critical-path graph. Outputs: graph picture, neuron table (markdown)."""
        state = self.ensure(state)
        if not state.get("image") or target is None:
            return gr.update(), "⚠️ Upload an image or pick an example, and a target, first."
        progress(0.1, desc="critical paths")
        try:
            x, _ = model_input(self.bundle, state["image"]["path"])
            cp, rows = critical_path_graph(
                self.bundle, x, int(target), layer=layer or None, graph_k=int(graph_k), rules=rules
            )
        except (ValueError, RuntimeError, OSError) as err:
            return gr.update(), f"⚠️ **Critical paths failed:** {_line(err)}"
        picture = figure_rgb(draw_graph(cp.graph))
        lines = [
            f"Top neurons of `{rows[0]['neuron'].rpartition(':')[0]}` for "
            f"**{self.bundle.names[int(target)]}** (share of the layer's total |relevance|; "
            "graph: SGLRP, top neurons per layer by positive relevance, heaviest path "
            "outlined):",
            "",
            "| neuron | relevance | share | on heaviest path |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['neuron']} | {r['relevance']:+.4g} | {100 * r['share']:+.1f}% | "
            f"{'yes' if r['on_path'] else ''} |"
            for r in rows
        ]
        return picture, "\n".join(lines)


def _line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
