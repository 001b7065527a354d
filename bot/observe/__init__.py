"""What an operator sees of a running bot: Prometheus metrics (:mod:`bot.observe.metrics`,
served by :mod:`bot.observe.server`) and the context of the turn being run (chat, turn id,
channel, model) that metrics and log lines share."""
