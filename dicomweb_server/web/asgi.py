"""ASGI entry point for uvicorn workers: Settings come from the environment the CLI set."""

from __future__ import annotations

import logging

from starlette.applications import Starlette

from dicomweb_server.config import load_settings
from dicomweb_server.web.app import create_app


def app_from_environment() -> Starlette:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(settings)
