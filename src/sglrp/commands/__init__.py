"""Sub-commands of the ``sglrp`` command line; each module has ``register(subparsers)``."""
