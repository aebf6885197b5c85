"""The application behind the ``sglrp`` command: explaining image files, the evaluation runner
(configuration, data sources, batch loop, result store, summary, plots, torch.distributed),
the HTML report and the neuron-path analysis. The library (:mod:`sglrp.api`,
:mod:`sglrp.metrics`, :mod:`sglrp.viz`, ...) knows nothing of it.
"""
