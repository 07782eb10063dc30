"""Package files: ``/otafiles/<package>/<branch>/<package>-<branch>-<version>.zip``.

Served from the blob store through the version's row (its object never changes): whole or one Range,
with the sha256 as ETag and 304 for a matching ``If-None-Match``. With ``download_mode = "redirect"``
and a store that has links of its own (S3), a GET or HEAD is answered 307 to a short-lived presigned
link instead, which the client follows (and asks here again once it expired).
"""

from __future__ import annotations

from email.utils import formatdate

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from otakit.errors import NotFoundError, ValidationError
from otakit.names import check_name
from otakit.server.blobstore import BlobStore
from otakit.server.deps import RepoDep, SettingsDep, StoreDep
from otakit.server.metrics import count_sent
from otakit.server.ranges import Unsatisfiable, content_range, parse_range
from otakit.server.repository import VersionKey, VersionRow
from otakit.server.responses import BlobResponse
from otakit.server.settings import ServerSettings
from otakit.versions import version_key
from otakit.web import etag_matches


class _Download(BlobResponse):
    """Counts the bytes it really sends (a Range's part, none for HEAD): otakit_download_bytes_total."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, count_sent(scope, send))


router = APIRouter(tags=["files"])


def _parse(path: str) -> tuple[str, str, str]:
    parts = path.split("/")
    if len(parts) != 3:
        raise ValidationError("expected /otafiles/<package>/<branch>/<package>-<branch>-<version>.zip")
    package, branch, filename = parts
    check_name(package, "package")
    check_name(branch, "branch")
    prefix = f"{package}-{branch}-"
    if not (filename.startswith(prefix) and filename.endswith(".zip")) or len(filename) <= len(prefix) + 4:
        raise ValidationError(f"the file name must be {prefix}<version>.zip")
    return package, branch, filename[len(prefix) : -len(".zip")]


async def _stream(request: Request, store: BlobStore, row: VersionRow, headers: dict[str, str]) -> Response:
    """The object, whole or the one range asked; ``FileNotFoundError`` when it is gone."""
    total = row.size if row.size is not None else await store.size(row.object_id)
    if_range = request.headers.get("if-range")
    asked = request.headers.get("range") if if_range is None or if_range == headers["ETag"] else None
    try:
        wanted = parse_range(asked, total)
    except Unsatisfiable as exc:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{exc.total}"})
    status = 200 if wanted is None else 206
    if wanted is not None:
        headers["Content-Range"] = content_range(wanted)
    headers["Content-Length"] = str(total if wanted is None else wanted.length)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type="application/zip")
    if wanted is None:
        reader = await store.open_range(row.object_id)
    else:
        reader = await store.open_range(row.object_id, wanted.start, wanted.end)
    return _Download(reader, status_code=status, headers=headers)


async def _serve(
    request: Request, repo: RepoDep, store: StoreDep, settings: ServerSettings, path: str
) -> Response:
    package, branch, version = _parse(path)
    key = VersionKey(package, branch, version_key(version))
    filename = f"{package}-{branch}-{version}.zip"
    for _ in range(3):
        row = await repo.get(key)
        if row is None or row.version != version:
            raise NotFoundError(f"no file {filename}")
        etag = f'"{row.sha256}"'
        if etag_matches(request, etag):
            return Response(status_code=304, headers={"ETag": etag, "Accept-Ranges": "bytes"})
        if settings.download_mode == "redirect":
            link = await store.download_url(
                row.object_id, expires_s=settings.download_url_seconds, filename=filename
            )
            if link is not None:
                return Response(
                    status_code=307, headers={"Location": link, "ETag": etag, "Cache-Control": "no-store"}
                )
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
        if row.uploaded is not None:
            headers["Last-Modified"] = formatdate(row.uploaded, usegmt=True)
        try:
            return await _stream(request, store, row, headers)
        except FileNotFoundError:
            continue  # replaced by a forced upload between the lookup and the open: look again
    raise NotFoundError(f"no file {filename}")


@router.api_route("/otafiles/{path:path}", methods=["GET", "HEAD"], summary="Download a package file")
async def otafiles(
    request: Request, repo: RepoDep, store: StoreDep, settings: SettingsDep, path: str
) -> Response:
    return await _serve(request, repo, store, settings, path)


@router.api_route("/ota-files/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def ota_files(
    request: Request, repo: RepoDep, store: StoreDep, settings: SettingsDep, path: str
) -> Response:
    return await _serve(request, repo, store, settings, path)
