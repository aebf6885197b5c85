"""The page: Gradio Blocks with its components and events (handlers in :mod:`.handlers`).

Left: the image (upload, built-in example, ``--folder`` file) and the model's top-5 classes
(clicking one makes it the target; the contrast class defaults to the second most
probable). Right: methods, rules and layer, the maps side by side on one colour scale,
the contrast view (SGLRP and LRP for the target and for the contrast class), the downloads
(``sglrp explain``'s grid, maps and JSON) and, on request, the critical-path graph.
Stable ``elem_id`` values let the browser test find every control.
"""

from __future__ import annotations

import gradio as gr

from sglrp.presets import PRESETS

from .backend import default_methods, method_choices
from .handlers import DEFAULT_LAYER, Context
from .inputs import example_choices

__all__ = ["build"]

_INTRO = """\
# sglrp explorer
**Model:** {model}. Upload an image or pick a generated example, choose the class to
explain and the methods, then press **Explain**. Red is relevance *for* the target, blue
*against* it. SGLRP (the softmax gradient propagated with LRP rules) marks the target's
object positive and the competitor's negative; LRP gives nearly the same map for every
class. The downloads are exactly what `sglrp explain` writes for the same settings.
"""


def build(ctx: Context) -> gr.Blocks:
    """Create the page for one server (``ctx``); call ``.launch()`` on the result."""
    bundle = ctx.bundle
    with gr.Blocks(title="sglrp explorer", analytics_enabled=False) as demo:
        state = gr.State(None)
        gr.Markdown(_INTRO.format(model=bundle.describe()))
        status = gr.Markdown("Start with an image.", elem_id="status")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(
                    label="Upload an image",
                    file_types=["image"],
                    type="filepath",
                    elem_id="upload",
                )
                examples = gr.Dropdown(
                    choices=[(e.label, e.key) for e in example_choices(bundle.side)],
                    value=None,
                    label="... or a generated example (with ground-truth boxes)",
                    elem_id="example",
                )
                folder_names = ctx.folder_choices()
                folder = gr.Dropdown(
                    choices=folder_names,
                    value=None,
                    label=f"... or a file of {ctx.folder}",
                    visible=ctx.folder is not None,
                    elem_id="folder",
                )
                picture = gr.Image(
                    label="model input",
                    type="numpy",
                    interactive=False,
                    elem_id="input-picture",
                    height=260,
                )
                top5 = gr.Radio(
                    choices=[],
                    label="top-5 classes (click to explain one)",
                    elem_id="top5",
                )
                target = gr.Dropdown(
                    choices=ctx.class_choices(), label="target class", elem_id="target"
                )
                contrast = gr.Dropdown(
                    choices=ctx.class_choices(),
                    label="contrast class (default: second most probable)",
                    elem_id="contrast",
                )
            with gr.Column(scale=3):
                with gr.Row():
                    chosen = gr.CheckboxGroup(
                        choices=method_choices(bundle),
                        value=default_methods(bundle),
                        label="methods",
                        elem_id="methods",
                        scale=3,
                    )
                    with gr.Column(scale=1, min_width=200):
                        rules = gr.Dropdown(
                            choices=list(PRESETS), value="dtd", label="LRP rules", elem_id="rules"
                        )
                        layer = gr.Dropdown(
                            choices=[DEFAULT_LAYER, *bundle.conv_layers],
                            value=DEFAULT_LAYER,
                            label="layer (Grad-CAM, Relevance-CAM)",
                            elem_id="layer",
                        )
                with gr.Row():
                    positive = gr.Checkbox(
                        label="positive relevance only (the paper's display)",
                        value=False,
                        elem_id="positive",
                    )
                    shared = gr.Checkbox(
                        label="one scale for all maps", value=False, elem_id="shared"
                    )
                    boxes = gr.Checkbox(label="ground-truth boxes", value=True, elem_id="boxes")
                    opacity = gr.Slider(
                        0.0, 1.0, value=1.0, step=0.05, label="map opacity", elem_id="opacity"
                    )
                run = gr.Button("Explain", variant="primary", elem_id="explain")
                maps = gr.Image(
                    label="maps", type="numpy", interactive=False, elem_id="maps", format="png"
                )
                contrast_view = gr.Image(
                    label="contrast view: SGLRP and LRP, target vs contrast class (one scale "
                    "per row)",
                    type="numpy",
                    interactive=False,
                    elem_id="contrast-view",
                    format="png",
                )
                downloads = gr.File(
                    label="downloads (as sglrp explain writes them)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
                with gr.Accordion("Neurons: critical-path graph", open=False):
                    with gr.Row():
                        paths_layer = gr.Dropdown(
                            choices=bundle.hidden,
                            value=bundle.conv_layers[-1] if bundle.conv_layers else None,
                            label="layer whose top neurons are listed",
                            elem_id="paths-layer",
                        )
                        graph_k = gr.Slider(
                            1, 8, value=3, step=1, label="neurons per layer", elem_id="graph-k"
                        )
                        paths_run = gr.Button("Compute critical paths", elem_id="paths")
                    graph = gr.Image(
                        label="critical-path graph",
                        type="numpy",
                        interactive=False,
                        elem_id="graph",
                        format="png",
                    )
                    neurons = gr.Markdown(elem_id="neurons")

        loaded = [state, picture, top5, target, contrast, status, maps, contrast_view, downloads]
        upload.upload(ctx.upload, [upload, state, boxes], [*loaded, upload])
        examples.change(ctx.example, [examples, state, boxes], loaded)
        folder.change(ctx.from_folder, [folder, state, boxes], loaded)
        top5.change(lambda v: gr.update(value=v), top5, target, queue=False)
        target.change(ctx.other_class, [target, state, contrast], contrast, queue=False)
        display = [positive, opacity, boxes, shared]
        run.click(
            ctx.explain,
            [state, target, chosen, rules, layer, *display],
            [state, maps, downloads, status],
        ).success(
            ctx.contrast,
            [state, contrast, rules, positive, opacity, boxes],
            [state, contrast_view, status, contrast],
        )
        for control in (positive, boxes, shared):
            control.change(ctx.redraw, [state, *display], [picture, maps, contrast_view])
        opacity.release(ctx.redraw, [state, *display], [picture, maps, contrast_view])
        paths_run.click(ctx.paths, [state, target, paths_layer, graph_k, rules], [graph, neurons])
    return demo
