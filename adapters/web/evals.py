"""The playground's Evaluate view: a suite run for the template being edited, with the unsaved
draft as one more version beside the saved one. Nothing is saved; replies come from the same
cache as ``fmbot eval run`` (FMBOT_HOME/cache/eval), so an unchanged version costs no request.

Suites are the files in FMBOT_WEB_SUITES (default FMBOT_HOME/evals) whose ``templates`` name the
template: a page picks one by file name, never by path, and the suite's own models and judge are
used (files the operator wrote, not a page's choice). One evaluation runs at a time: another
is refused (409), not queued, and one whose page went away is stopped. Starlette does not
cancel a handler when its client disconnects, so the run waits on the connection beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.web.requests import json_object, required
from adapters.web.security import error
from adapters.web.templates import TemplateRoutes, Unprocessable, checked_name
from bot.batch.model import batch_settings
from bot.errors import ConfigError, FmbotError
from bot.eval.cells import cell_messages
from bot.eval.report import matrix
from bot.eval.run import Cell, EvalResult, cache_dir, run_eval
from bot.eval.suite import LoadedSuite, Version, load_suite
from bot.models.registry import get_text_model
from bot.settings import Settings

SUITE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}\.ya?ml$")
SAVED, DRAFT = "saved", "draft"
BUSY = (
    "an evaluation is already running (this page's or another's); wait for it to finish, "
    "or close or reload the page that started it, which stops it"
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class EvalRoutes:
    def __init__(self, templates: TemplateRoutes, settings: Settings, directory: Path) -> None:
        self.templates = templates
        self.settings = settings
        self.directory = directory
        self._one_at_a_time = asyncio.Lock()

    def _load(self, path: Path) -> LoadedSuite:
        return load_suite(path, self.settings)

    async def index(self, request: Request) -> JSONResponse:
        """The suites that run template ``?template=NAME`` (all with none), with their problems."""
        name = request.query_params.get("template")
        paths = sorted(self.directory.glob("*.y*ml")) if self.directory.is_dir() else []
        suites = []
        for path in paths:
            if not SUITE_NAME.match(path.name):
                continue
            loaded = await asyncio.to_thread(self._load, path)
            if name is not None and name not in loaded.suite.templates:
                continue
            suites.append(
                {
                    "name": path.name,
                    "description": loaded.suite.description,
                    "cases": len(loaded.cases),
                    "models": loaded.models,
                    "threshold": loaded.suite.threshold,
                    "problems": [str(p) for p in loaded.problems],
                }
            )
        return JSONResponse({"directory": str(self.directory), "suites": suites})

    async def run(self, request: Request) -> Response:
        data = await json_object(request, suite=str, template=str, source=str)
        suite_name = required(data, "suite")
        if not SUITE_NAME.match(suite_name):
            raise HTTPException(400, "'suite' is a file name from GET /api/evals, e.g. shop.yaml")
        name = checked_name(required(data, "template"))
        path = self.directory / suite_name
        if not path.is_file():
            raise HTTPException(404, f"no suite {suite_name!r} in {self.directory}")
        loaded = await asyncio.to_thread(self._load, path)
        if loaded.problems:
            return error(422, "; ".join(str(p) for p in loaded.problems[:5]))
        saved = next((v for v in loaded.versions if v.ref == name), None)
        if saved is None:
            raise HTTPException(400, f"suite {suite_name!r} does not run template {name!r}")
        versions = [dataclasses.replace(saved, ref=SAVED)]
        source = data.get("source")
        if source is not None and source != saved.source:
            template, problems = await self.templates.draft(name, source)
            if template is None:
                return Unprocessable(problems).response()
            versions.append(Version(DRAFT, template, source))
        chosen = dataclasses.replace(loaded, versions=versions)
        if self._one_at_a_time.locked():
            return error(409, BUSY)
        # No await between the check and taking the lock: no second run slips in.
        async with self._one_at_a_time:
            try:
                result = await until_disconnected(request, self._evaluate(chosen))
            except ConfigError as exc:
                return error(422, str(exc))
            except FmbotError as exc:
                return error(502, str(exc))
        if result is None:
            log.info("evaluation of %s stopped: its client went away", suite_name)
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        return JSONResponse(await self._report(chosen, result))

    async def _evaluate(self, loaded: LoadedSuite) -> EvalResult:
        # Cancelled, it leaves no half-written cache entry (only finished replies are written,
        # atomically); the scratch directory goes even if a worker thread still writes to it.
        with tempfile.TemporaryDirectory(
            prefix="fmbot-web-eval-", ignore_cleanup_errors=True
        ) as output:
            return await run_eval(
                loaded, Path(output), self.settings, cache=cache_dir(self.settings.home)
            )

    async def _report(self, loaded: LoadedSuite, result: EvalResult) -> dict[str, Any]:
        by_ref = {v.ref: v for v in loaded.versions}
        stable = {}
        for spec in loaded.models:
            model = await get_text_model(batch_settings(spec, False))
            stable[spec] = model.reuses_prompt_prefix
        # Failures first, then by case: what to look at is at the top.
        cells = sorted(result.cells, key=lambda c: (c.passed, c.key.case, c.key.template))
        rates = {}
        for ref in by_ref:
            mine = [c for c in result.cells if c.key.template == ref]
            rates[ref] = sum(c.passed for c in mine) / len(mine) if mine else 0.0
        return {
            "threshold": result.threshold,
            "pass_rates": rates,
            "matrix": [
                {
                    "version": line.template,
                    "model": line.model,
                    "pass_rate": line.pass_rate,
                    "passed": line.passed,
                    "cells": line.cells,
                    "score": line.score,
                }
                for line in matrix(result)
            ],
            "cells": [
                _cell_json(loaded, by_ref[c.key.template], c, stable[c.key.model]) for c in cells
            ],
        }


async def until_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result; None if the client disconnected first, ``work`` then cancelled and
    finished (its ``finally`` blocks have run) before this returns."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Our own cancellation (the server stopping) still propagates after the finally.
            await asyncio.wait({task})
    if task.cancelled():
        return None
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns once the client has gone. The body was read before, so the server's receive()
    blocks until the disconnect: no polling."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _cell_json(loaded: LoadedSuite, version: Version, cell: Cell, stable: bool) -> dict[str, Any]:
    messages, why = cell_messages(loaded, version, cell, stable)
    return {
        "case": cell.key.case,
        "message": cell.message,
        "version": cell.key.template,
        "model": cell.key.model,
        "pass": cell.passed,
        "score": cell.score,
        "status": cell.status,
        "error": cell.error,
        "reply": cell.reply,
        "failures": cell.failures(),
        "assertions": [
            {
                "label": g.assertion.label,
                "pass": g.outcome.passed,
                "score": g.outcome.score,
                "reason": g.outcome.reason,
                "error": g.outcome.error,
                "weight": g.assertion.weight,
            }
            for g in cell.graded
        ],
        "messages": [{"role": m.role, "text": m.text} for m in messages],
        "messages_error": why,
        "retrieved": cell.passages,  # as the CLI's result column names them
    }
