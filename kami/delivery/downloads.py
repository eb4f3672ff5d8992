"""Files sold as downloads: stored blobs, the delivered items that name them, signed links.

A link is `/d/<token>?exp=<unix seconds>&sig=<hex HMAC-SHA256 of "<token>|<exp>">` under a
secret of the shop's: it cannot be made or stretched without the secret, it ends at `exp`, and
every download through it is counted by one guarded UPDATE, so the limit holds however many
downloads race. The bytes are stored under the SHA-256 of their content in a directory that
is never served as such; only a live item's valid link reaches them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import exists, insert, select, update
from sqlalchemy.orm import Session

from kami.delivery.models import Download, DownloadEvent, File, Item
from kami.kernel.errors import InvalidInput, KamiError
from kami.kernel.ids import new_token

FILE_ID = re.compile(r"^[A-Za-z0-9_-]{8,32}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SIGNATURE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9!#$&^_.+-]{1,63}$")
CHUNK = 1024 * 1024


class TooLarge(KamiError):
    status = 413
    slug = "file-too-large"
    title = "File too large"


@dataclass(frozen=True, slots=True)
class FileView:
    id: str  # the public id a download SKU names in `delivery_config.file`
    sha256: str
    name: str
    size: int
    content_type: str
    created_at: datetime
    created_by: str | None = None


@dataclass(frozen=True, slots=True)
class DownloadView:
    token: str
    order_id: int
    position: int
    file: FileView
    link_minutes: int
    max_downloads: int
    downloads: int

    @property
    def left(self) -> int:
        return max(self.max_downloads - self.downloads, 0)


# -- stored files ------------------------------------------------------------------------------
def clean_name(name: str | None) -> str:
    """A file name safe to show and to put in Content-Disposition: the last path part, no
    control or format characters, no leading dots, at most 200 characters."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C")
    base = base.strip().lstrip(".").strip()
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 199 - len(ext)] + dot + ext) if dot and len(ext) <= 16 else base[:200]
    return base or "download"


def clean_content_type(value: str | None) -> str:
    media = (value or "").split(";", 1)[0].strip().lower()
    return media if _CONTENT_TYPE.match(media) else "application/octet-stream"


def blob_path(files_dir: Path, sha256: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):  # never a path built from anything else
        raise ValueError("not a SHA-256 hex digest")
    return files_dir / sha256


def write_blob(files_dir: Path, chunks: Iterable[bytes], max_bytes: int) -> tuple[str, int]:
    """Stream the bytes into the files directory under their SHA-256; (digest, size).

    Written to a temporary file first and renamed into place, so a reader never sees half a
    file and an upload cut short or over `max_bytes` leaves nothing behind. No database
    transaction is open meanwhile: a large upload does not hold the write lock.
    """
    files_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=files_dir, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(
                        f"the file is larger than the {max_bytes} bytes allowed "
                        "(KAMI_FILES_MAX_BYTES)",
                        where="file",
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise InvalidInput("the file is empty", where="file")
        sha = digest.hexdigest()
        os.replace(tmp, blob_path(files_dir, sha))
        return sha, size
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def add_file(
    session: Session,
    sha256: str,
    name: str | None,
    size: int,
    content_type: str | None,
    now: datetime,
    *,
    created_by: str | None = None,
) -> FileView:
    row = File(
        public_id=new_token(16),
        sha256=sha256,
        name=clean_name(name),
        size=size,
        content_type=clean_content_type(content_type),
        created_by=created_by,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return _file_view(row)


def _file_view(row: File) -> FileView:
    return FileView(
        row.public_id,
        row.sha256,
        row.name,
        int(row.size),
        row.content_type,
        row.created_at,
        row.created_by,
    )


def find_file(session: Session, public_id: str) -> FileView | None:
    if not FILE_ID.match(public_id or ""):
        return None
    row = session.execute(select(File).where(File.public_id == public_id)).scalar_one_or_none()
    return None if row is None else _file_view(row)


def list_files(session: Session, *, limit: int = 500) -> list[FileView]:
    rows = session.execute(select(File).order_by(File.id.desc()).limit(limit)).scalars()
    return [_file_view(r) for r in rows]


# -- delivered downloads -----------------------------------------------------------------------
def record_downloads(
    session: Session,
    order_id: int,
    file_id: str,
    count: int,
    now: datetime,
    *,
    start: int,
    link_minutes: int,
    max_downloads: int,
    line_id: int | None = None,
    valid_until: datetime | None = None,
) -> list[str]:
    """`count` items of the order, numbered from `start`, each a download of the file with
    its own token; returns the tokens. The caller checked that the file exists."""
    file_pk = session.execute(select(File.id).where(File.public_id == file_id)).scalar_one()
    tokens = [new_token(24) for _ in range(count)]
    positions = range(start, start + count)
    session.execute(
        insert(Item),
        [
            {
                "order_id": order_id,
                "position": n,
                "line_id": line_id,
                "delivered_at": now,
                "valid_until": valid_until,
            }
            for n in positions
        ],
    )
    session.execute(
        insert(Download),
        [
            {
                "token": t,
                "order_id": order_id,
                "position": n,
                "file_id": file_pk,
                "link_minutes": link_minutes,
                "max_downloads": max_downloads,
                "downloads": 0,
                "created_at": now,
            }
            for n, t in zip(positions, tokens, strict=True)
        ],
    )
    return tokens


def order_downloads(session: Session, order_id: int) -> dict[int, DownloadView]:
    """The order's downloads by item position (revoked items included: callers go by the
    live items they hold)."""
    rows = session.execute(
        select(Download, File)
        .join(File, File.id == Download.file_id)
        .where(Download.order_id == order_id)
    ).tuples()
    return {d.position: _download_view(d, f) for d, f in rows}


def find_download(session: Session, token: str) -> DownloadView | None:
    if not TOKEN.match(token or ""):
        return None
    row = session.execute(
        select(Download, File)
        .join(File, File.id == Download.file_id)
        .where(Download.token == token)
    ).first()
    return None if row is None else _download_view(*row.tuple())


def _download_view(d: Download, f: File) -> DownloadView:
    return DownloadView(
        d.token,
        d.order_id,
        d.position,
        _file_view(f),
        d.link_minutes,
        d.max_downloads,
        d.downloads,
    )


def count_download(
    session: Session, token: str, now: datetime, ip: str | None, user_agent: str | None
) -> int | None:
    """Count one download of a live item within its limit; the new count, or None when the
    limit is reached or the item was taken back. One guarded statement: of N parallel
    downloads only `max_downloads - downloads` can match, whatever the interleaving."""
    live = exists().where(
        Item.order_id == Download.order_id,
        Item.position == Download.position,
        Item.revoked_at.is_(None),
    )
    row = session.execute(
        update(Download)
        .where(Download.token == token, Download.downloads < Download.max_downloads, live)
        .values(downloads=Download.downloads + 1)
        .returning(Download.id, Download.downloads)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    download_id, count = row.tuple()
    session.execute(
        insert(DownloadEvent).values(
            download_id=download_id,
            at=now,
            ip=(ip or "")[:64] or None,
            user_agent=(user_agent or "")[:512] or None,
        )
    )
    return int(count)


def download_times(session: Session, token: str) -> list[tuple[datetime, str | None]]:
    """When and from where the item was downloaded, oldest first."""
    rows = session.execute(
        select(DownloadEvent.at, DownloadEvent.ip)
        .join(Download, Download.id == DownloadEvent.download_id)
        .where(Download.token == token)
        .order_by(DownloadEvent.id)
    ).tuples()
    return list(rows)


# -- signed links ------------------------------------------------------------------------------
def link_signature(secret: bytes, token: str, exp: int) -> str:
    return hmac.new(secret, f"{token}|{exp}".encode(), hashlib.sha256).hexdigest()


def link_query(secret: bytes, token: str, exp: int) -> str:
    return f"exp={exp}&sig={link_signature(secret, token, exp)}"


def signature_ok(secret: bytes, token: str, exp: int, sig: str) -> bool:
    if not TOKEN.match(token or "") or not SIGNATURE.match(sig or ""):
        return False
    return hmac.compare_digest(link_signature(secret, token, exp), sig)
