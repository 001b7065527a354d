"""The HTML pages' plumbing: Jinja2 templates and the static files, both served from this package
(no build step, no third-party requests)."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

HERE = Path(__file__).parent
# autoescape on for every template: whatever a page shows is escaped unless marked safe.
pages = Jinja2Templates(env=Environment(loader=FileSystemLoader(HERE / "pages"), autoescape=True))
static = StaticFiles(directory=HERE / "static")
