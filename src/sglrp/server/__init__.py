"""``sglrp serve``: the interactive explorer in the browser (optional extra ``sglrp[app]``).

The page is built with Gradio, which only this package's :mod:`.layout`, :mod:`.handlers`
and :mod:`.app` import; the library never does. :mod:`.backend` (model, prediction, maps,
critical paths), :mod:`.inputs` (uploads, examples, folder) and :mod:`.pictures` (maps on one
colour scale) are plain functions usable and tested without Gradio.

Importing this package switches off what would make the page reach the internet: Gradio's
analytics and version check and the Hugging Face Hub's telemetry (environment defaults
set before Gradio is imported; a value the user set is kept).
"""

from __future__ import annotations

import os

#: Environment defaults that keep the server offline and quiet.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}

for _key, _value in OFFLINE_ENVIRONMENT.items():
    os.environ.setdefault(_key, _value)

__all__ = ["OFFLINE_ENVIRONMENT"]
