"""Deprecated name of :mod:`sglrp.metrics` (the metrics for relevance maps).

``import sglrp.evaluate`` keeps working and warns; use ``sglrp.metrics`` instead. The
evaluation runner moved to the application, :mod:`sglrp.app.runner`.
"""

import warnings

from ..metrics import *  # noqa: F403 - the alias re-exports every public name
from ..metrics import __all__  # noqa: F401

warnings.warn(
    "sglrp.evaluate is deprecated; import sglrp.metrics instead",
    DeprecationWarning,
    stacklevel=2,
)
