"""The Telegram channel (aiogram) over fmbot's dialog manager.

Modules, one concept each: ``settings`` (environment), ``access`` (who may talk), ``target``
(chat keys, topics), ``addressing`` (group mentions), ``formatting``/``splitting`` (Markdown →
entities, 4096-character parts), ``throttle``, ``outbox`` (final delivery), ``preview`` (drafts
or edits while streaming), ``actions`` (typing), ``replies`` (one reply, /stop), ``handlers``
(the router), ``pictures`` (photos and image files, the ``telegram:`` fetcher), ``albums``
(several photos, one turn), ``modes`` (the /mode keyboard), ``inflight``/``runner`` (polling,
webhook, graceful shutdown), ``webhook`` (the endpoint: 400 for a body that is no update),
``redact`` (no token in logs), ``unknown`` (update types aiogram does not know, skipped without
their content).
"""

from adapters.telegram.app import TelegramApp
from adapters.telegram.runner import Runner, run_telegram
from adapters.telegram.settings import TelegramSettings, load_telegram_settings

__all__ = ["Runner", "TelegramApp", "TelegramSettings", "load_telegram_settings", "run_telegram"]
