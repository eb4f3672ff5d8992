"""The admin API for files sold as downloads: upload one, list them.

An upload is checked against the size cap before its body is read (the declared length), then
again while its bytes are copied; the bytes land in the files directory under their SHA-256
and the row is written after, in a short transaction of its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from kami import accounts, delivery
from kami.kernel.clock import utcnow
from kami.kernel.errors import Forbidden, InvalidInput, KamiError
from kami.web.deps import AdminDep, ShopDep, container
from kami.web.inputs import CheckedRoute, check_text

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=CheckedRoute)

FILE_ROLES = frozenset({accounts.Role.OWNER, accounts.Role.OPERATOR})
FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the file's bytes
_UPLOAD_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class LengthRequired(KamiError):
    status = 411
    slug = "length-required"
    title = "Length required"


class FileOut(BaseModel):
    id: str = Field(description="name it in a download SKU's delivery_config.file")
    name: str
    size: int
    content_type: str
    sha256: str
    created_at: datetime
    created_by: str | None


def file_out(f: delivery.FileView) -> FileOut:
    return FileOut(
        id=f.id,
        name=f.name,
        size=f.size,
        content_type=f.content_type,
        sha256=f.sha256,
        created_at=f.created_at,
        created_by=f.created_by,
    )


def _role(admin: accounts.AdminView) -> None:
    if admin.role not in FILE_ROLES:
        raise Forbidden(
            f"a {admin.role} may not manage files; that is for the operator and owner",
            where="role",
            slug="role-forbidden",
        )


@router.post("/files", status_code=201, response_model=FileOut, openapi_extra=_UPLOAD_SCHEMA)
async def upload_file(request: Request, shop: ShopDep, admin: AdminDep) -> FileOut:
    """Upload a file to sell as a download (multipart field `file`)."""
    _role(admin)
    settings = container(request).settings
    cap = settings.files_max_bytes
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise LengthRequired(
            "send the upload with a Content-Length, so its size is known before it is read",
            where="Content-Length",
        )
    if int(declared) > cap + FORM_OVERHEAD:
        raise delivery.TooLarge(
            f"the upload is {declared} bytes; files may be at most {cap} bytes "
            "(KAMI_FILES_MAX_BYTES)",
            where="file",
        )
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "multipart/form-data":
        raise InvalidInput("send the file as multipart/form-data", where="Content-Type")
    # A malformed body is answered 400 by Starlette's parser, as a problem like any other.
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidInput("a file is required in the form field 'file'", where="file")
        name = check_text(upload.filename or "", "file.filename")
        content_type = upload.content_type

        def store() -> delivery.FileView:
            chunks = iter(lambda: upload.file.read(delivery.CHUNK), b"")
            sha, size = delivery.write_blob(settings.files_dir, chunks, cap)
            with shop.db.write() as s:
                return delivery.add_file(
                    s, sha, name, size, content_type, utcnow(), created_by=admin.username
                )

        return file_out(await run_in_threadpool(store))
    finally:
        await form.close()


@router.get("/files", response_model=list[FileOut])
def list_files(shop: ShopDep, admin: AdminDep) -> list[FileOut]:
    """Stored files, newest first."""
    _role(admin)
    with shop.db.read() as s:
        return [file_out(f) for f in delivery.list_files(s)]
