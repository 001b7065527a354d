"""The web channel: ``fmbot web``, a JSON API with streamed replies, a chat page and a prompt
playground on one Starlette app (see README "Web").

Modules: :mod:`.settings` (listen address, token), :mod:`.security` (who may ask what),
:mod:`.stream` (reply events as server-sent events), :mod:`.chats` and :mod:`.templates`
(the API), :mod:`.uploads` (pictures sent from the page), :mod:`.editing` (checking and saving
template sources), :mod:`.app` (the routes) and :mod:`.server` (uvicorn and shutdown).
"""
