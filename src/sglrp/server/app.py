"""Start the page: load the model, build the Blocks, launch the local web server."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import gradio as gr
import torch

from .backend import load_bundle
from .handlers import Context
from .inputs import folder_images
from .layout import build

__all__ = ["MAX_FILE_SIZE", "SMALL_INPUT", "create", "default_threads", "serve"]

#: Inputs up to this side (pixels) are explained with one torch thread by default.
SMALL_INPUT = 128

#: Largest upload accepted by the web server (bigger files are refused before reading).
MAX_FILE_SIZE = "50mb"

#: System fonts only: the default theme would fetch web fonts from the internet.
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO = ["ui-monospace", "monospace"]


def default_threads(side: int) -> int:
    """Torch threads for inputs of ``side`` pixels: one core is left to the web server.

    One thread for inputs up to :data:`SMALL_INPUT` pixels (small convolutions gain nothing
    from more), else ``cpu_count - 1`` (at most torch's default). On 2 cores that is one
    thread: on a busy machine two threads cost VGG16 at 224 six times the wall time
    (45 s instead of 7 s per click, measured at load average 7 with
    ``benchmarks/serve_latency.py``), as each waits for the other's core.
    """
    if side <= SMALL_INPUT:
        return 1
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))


def create(
    model: str = "shapes_vgg",
    weights: str | None = None,
    *,
    folder: str | os.PathLike | None = None,
    num_classes: int | None = None,
    labels: str | None = None,
    root: str | os.PathLike | None = None,
    threads: int | None = None,
) -> tuple[gr.Blocks, Context]:
    """Load the model and build the page (not yet launched).

    Parameters
    ----------
    model, weights, num_classes, labels
        As for ``sglrp explain``.
    folder
        A folder whose image files the page offers.
    root
        Where the tabs' files go (default: a new temporary folder).
    threads
        Torch threads for the server process. ``None``: :func:`default_threads`.
    """
    if folder is not None:
        folder_images(folder)  # a missing folder is an error before the model loads
    work = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="sglrp-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(model, weights, num_classes=num_classes, labels=labels, out=work)
    threads = default_threads(int(bundle.settings.crop or 224)) if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    ctx = Context(bundle, work, Path(folder) if folder is not None else None)
    demo = build(ctx)
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo, ctx


def serve(
    model: str = "shapes_vgg",
    weights: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    folder: str | os.PathLike | None = None,
    num_classes: int | None = None,
    labels: str | None = None,
    threads: int | None = None,
) -> None:
    """Serve the page on ``http://host:port`` until interrupted; remove its files after."""
    demo, ctx = create(
        model, weights, folder=folder, num_classes=num_classes, labels=labels, threads=threads
    )
    theme = gr.themes.Default(font=_FONTS, font_mono=_MONO)
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=True,
            quiet=True,
            max_file_size=MAX_FILE_SIZE,
            theme=theme,
            ssr_mode=False,
            prevent_thread_lock=True,
        )
        print(
            f"sglrp serve: http://{host}:{port} ({ctx.bundle.describe()}, "
            f"{torch.get_num_threads()} threads); Ctrl+C stops",
            flush=True,
        )
        demo.block_thread()
    finally:
        demo.close()
        shutil.rmtree(ctx.root, ignore_errors=True)
        sys.stdout.flush()
