"""fmbot core: dialog manager, dialog stores, prompt templates and model backends.

Channels live in the sibling package ``adapters``; this package never imports it.
"""

__version__ = "0.1.0"
