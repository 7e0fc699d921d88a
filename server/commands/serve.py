"""`lpu serve`: run the OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvicorn

from lpu_runtime import MODEL_PRESETS, LpuError, can_serve, check_model
from server.app import create_app
from server.commands.base import Command
from server.drain import DrainingServer
from server.http_limits import answer_overload_as_openai, header_timeout_protocol
from server.settings import ALL_OPTIONS, Settings, add_options
from server.state import AppState


def configure(parser: argparse.ArgumentParser) -> None:
    add_options(parser, ALL_OPTIONS)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if not can_serve(settings.model):
        # Presets describe architectures for `lpu compile`; only models with weights can be served.
        hint = (
            f" or `lpu serve --model synthetic:{settings.model}`" if settings.model in MODEL_PRESETS else ""
        )
        print(
            f"lpu serve: no weights for model {settings.model!r}: pass a checkpoint path, a hub id or "
            f"synthetic:<preset> (use `lpu compile --model {settings.model}` to see how it would be placed{hint})",
            file=sys.stderr,
        )
        return 2
    # uvicorn configures only its own loggers; ours ("server", and the runtime's while it fetches a model)
    # need a handler too, before the first check.
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(levelname)s:     %(name)s: %(message)s")
    try:
        # Headers, configs, tokenizer, template and placement, no weights: a bad file or a model that does
        # not fit fails here in one sentence, before the server starts.
        check_model(
            settings.model,
            settings.system_spec(),
            settings.engine_config(),
            tokenizer=settings.tokenizer,
            chat_template=settings.chat_template,
            max_context=settings.max_model_len,
        )
    except (KeyError, LpuError) as exc:
        print(f"lpu serve: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    app = create_app(settings)
    state: AppState = app.state.lpu
    answer_overload_as_openai()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=header_timeout_protocol(settings.header_timeout_s),
        limit_concurrency=settings.max_connections,
        # The drain (server/drain.py) has ended every request before uvicorn's own shutdown starts.
        timeout_graceful_shutdown=1,
    )
    server = DrainingServer(config, state.drain, settings.drain_timeout_s, state.abort_all)
    # A dead engine that will not be restarted stops the server the way SIGTERM does, from any thread.
    state.stop = lambda: os.kill(os.getpid(), signal.SIGTERM)
    server.run()
    return state.exit_code


COMMAND = Command("serve", "run the OpenAI-compatible HTTP server", configure, run)
