"""Thin HTTP handlers: parse, delegate to `server.serving` or the app state, return."""

from __future__ import annotations

from fastapi import APIRouter

from server.routes import chat, completions, health, metrics, models, responses

ROUTERS: tuple[APIRouter, ...] = (
    chat.router,
    completions.router,
    responses.router,
    models.router,
    health.router,
    metrics.router,
)
