"""The set of templates in a directory, reloaded when files change.

A running bot calls :meth:`PromptLibrary.get` per turn; a cheap ``stat`` of the directory decides
whether anything needs re-reading. An invalid edit keeps the last good version serving and logs
the error with its location.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bot.errors import ConfigError, PromptError
from bot.prompts.loader import check_template, load_template
from bot.prompts.source import is_template_file
from bot.prompts.template import PromptTemplate

log = logging.getLogger(__name__)

_Signature = tuple[int, int]  # (mtime_ns, size)


class PromptLibrary:
    def __init__(self, directory: Path, *, check_interval: float = 0.0) -> None:
        """``check_interval``: look at the directory at most this often (seconds); running bots
        use about a second so a busy worker does not list and stat every file on every turn."""
        self.directory = directory
        self.check_interval = check_interval
        self._checked = float("-inf")
        self._templates: dict[str, PromptTemplate] = {}
        self._by_path: dict[Path, str] = {}
        self._seen: dict[Path, _Signature] = {}
        self.errors: dict[Path, PromptError] = {}
        self.refresh()

    def _files(self) -> dict[Path, _Signature]:
        files: dict[Path, _Signature] = {}
        for path in sorted(self.directory.iterdir()):
            if is_template_file(path) and path.is_file():
                st = path.stat()
                files[path] = (st.st_mtime_ns, st.st_size)
        return files

    def refresh(self) -> None:
        """Re-read added or changed files and drop removed ones."""
        try:
            current = self._files()
        except OSError as exc:
            log.error("cannot list templates in %s: %s", self.directory, exc)
            return
        for path in set(self._seen) - set(current):
            name = self._by_path.pop(path, None)
            if name is not None:
                self._templates.pop(name, None)
            self.errors.pop(path, None)
        for path, signature in current.items():
            if self._seen.get(path) == signature:
                continue
            try:
                template = load_template(path)
                check_template(template)
            except PromptError as exc:
                # Keep serving the last good version of this file, if any.
                self.errors[path] = exc
                log.error("template not loaded: %s", exc)
                continue
            self.errors.pop(path, None)
            old = self._by_path.get(path)
            if old is not None and old != template.name:
                self._templates.pop(old, None)
            self._templates[template.name] = template
            self._by_path[path] = template.name
        self._seen = current

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self.refresh()

    def get(self, name: str) -> PromptTemplate | None:
        self._maybe_refresh()
        return self._templates.get(name)

    def require(self, name: str, setting: str) -> PromptTemplate:
        """The template ``name``, or a ConfigError naming ``setting`` and the valid names."""
        template = self.get(name)
        if template is None:
            names = ", ".join(t.name for t in self.all()) or "none"
            raise ConfigError(
                setting,
                name,
                f"no valid template with that name in {self.directory} (valid: {names}); "
                "`fmbot prompts check` shows files with problems",
            )
        return template

    def all(self) -> list[PromptTemplate]:
        self._maybe_refresh()
        return sorted(self._templates.values(), key=lambda t: t.name)

    def modes(self) -> list[PromptTemplate]:
        """The templates a chat may switch to (/mode): all but internal ones (``chat_mode``)."""
        return [t for t in self.all() if t.chat_mode]

    def mode(self, name: str) -> PromptTemplate | None:
        """The template ``name`` if a chat may switch to it."""
        template = self.get(name)
        return template if template is not None and template.chat_mode else None
