"""The ``fmbot`` command line: :mod:`.main` (the app and its channel and worker commands),
:mod:`.batch` (``fmbot batch``), :mod:`.evals` (``fmbot eval``), :mod:`.prompts`
(``fmbot prompts``) and :mod:`.bench` (``fmbot bench``, a load driver, not a channel).
``python -m adapters.cli`` runs it too.
"""

from adapters.cli.main import app, main

__all__ = ["app", "main"]
