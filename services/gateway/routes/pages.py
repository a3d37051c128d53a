"""The dashboard: two static pages that call the REST API from the browser (static/*.js).
Not in the OpenAPI schema: they are for people, not clients."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/run/{run_id}")
async def run_page(run_id: str) -> FileResponse:
    return FileResponse(STATIC / "run.html")
