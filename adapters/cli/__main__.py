"""``python -m adapters.cli``: what the ``fmbot`` script runs (tests start roles this way)."""

from adapters.cli.main import main

main()
