"""The console's own stylesheet and script, served from the package (no CDN, no build)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import FileResponse

from kami.kernel.errors import NotFound
from kami.web.console.frame import PREFIX

router = APIRouter(prefix=PREFIX, include_in_schema=False)

FILES = {"console.css": "text/css", "console.js": "text/javascript"}


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    if name not in FILES:
        raise NotFound(f"no console file {name!r}", where="name")
    path = resources.files("kami.web.console") / "static" / name
    return FileResponse(str(path), media_type=FILES[name], headers={"Cache-Control": "no-cache"})
