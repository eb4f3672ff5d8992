"""`GET /d/<token>?exp=…&sig=…`: a buyer's signed, expiring, counted download link.

The link is checked and the download counted before the first byte is sent; a refused link
gets a problem and no bytes. Each GET is one download: byte ranges are not offered (a
download manager splitting the file into ranges would spend the buyer's downloads).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from kami import fulfilment
from kami.kernel.clock import utcnow
from kami.web.deps import ShopDep, client_ip, container
from kami.web.inputs import CheckedRoute

router = APIRouter(tags=["shop"], route_class=CheckedRoute)

Token = Annotated[str, Path(min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class WholeFileResponse(FileResponse):
    """The whole file, whatever Range the client asks for: one request, one counted download."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope.get("headers", []) if k not in (b"range", b"if-range")]
        await super().__call__({**scope, "headers": headers}, receive, send)


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the real one in RFC 5987 `filename*`."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;%' else "_" for c in name)
    return f"attachment; filename=\"{fallback or 'download'}\"; filename*=UTF-8''{quote(name)}"


@router.get(
    "/d/{token}",
    response_class=FileResponse,
    responses={
        200: {"description": "the file", "content": {"application/octet-stream": {}}},
        403: {"description": "not a link this shop made (bad signature)"},
        410: {"description": "expired, downloaded as often as allowed, or taken back"},
    },
)
def download(
    token: Token,
    request: Request,
    shop: ShopDep,
    exp: Annotated[int, Query(ge=0, le=2**40, description="unix seconds the link ends")],
    sig: Annotated[str, Query(max_length=64, description="hex HMAC-SHA256")],
) -> FileResponse:
    grant = fulfilment.open_download(
        shop,
        container(request).settings.files_dir,
        token,
        exp,
        sig,
        utcnow(),
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    return WholeFileResponse(
        grant.path,
        media_type=grant.content_type,
        headers={
            "Content-Disposition": content_disposition(grant.name),
            "Cache-Control": "no-store",
            "Accept-Ranges": "none",
            "X-Downloads-Left": str(grant.max_downloads - grant.downloads),
        },
    )
