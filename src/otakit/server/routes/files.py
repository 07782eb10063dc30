"""Package files: ``/otafiles/<package>/<branch>/<package>-<branch>-<version>.zip``.

Served from the blob store through the version's row (its object never changes): whole or one Range,
with the sha256 as ETag and 304 for a matching ``If-None-Match``. With ``download_mode = "redirect"``
and a store that has links of its own (S3), a GET or HEAD is answered 307 to a short-lived presigned
link instead, which the client follows (and asks here again once it expired).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from otakit.errors import NotFoundError, ValidationError
from otakit.names import check_name
from otakit.server.blobstore import BlobStore
from otakit.server.deps import RepoDep, SettingsDep, StoreDep, app_state
from otakit.server.metrics import count_sent
from otakit.server.ranges import Unsatisfiable, content_range, parse_range
from otakit.server.repository import VersionKey
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


@dataclass(frozen=True, slots=True)
class _Object:
    """What a download answers: a stored object, its length when known, its ETag and file name."""

    object_id: str
    size: int | None
    etag: str
    filename: str
    uploaded: float | None = None


async def _answer(request: Request, store: BlobStore, settings: ServerSettings, found: _Object) -> Response:
    """304, a 307 to the store (redirect mode), or the object whole or one Range of it;
    ``FileNotFoundError`` when the object is gone."""
    if etag_matches(request, found.etag):
        return Response(status_code=304, headers={"ETag": found.etag, "Accept-Ranges": "bytes"})
    if settings.download_mode == "redirect":
        link = await store.download_url(
            found.object_id, expires_s=settings.download_url_seconds, filename=found.filename
        )
        if link is not None:
            headers = {"Location": link, "ETag": found.etag, "Cache-Control": "no-store"}
            return Response(status_code=307, headers=headers)
    headers = {
        "ETag": found.etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{found.filename}"',
    }
    if found.uploaded is not None:
        headers["Last-Modified"] = formatdate(found.uploaded, usegmt=True)
    total = found.size if found.size is not None else await store.size(found.object_id)
    if_range = request.headers.get("if-range")
    asked = request.headers.get("range") if if_range is None or if_range == found.etag else None
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
        reader = await store.open_range(found.object_id)
    else:
        reader = await store.open_range(found.object_id, wanted.start, wanted.end)
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
        found = _Object(row.object_id, row.size, f'"{row.sha256}"', filename, row.uploaded)
        try:
            return await _answer(request, store, settings, found)
        except FileNotFoundError:
            continue  # replaced by a forced upload between the lookup and the open: look again
    raise NotFoundError(f"no file {filename}")


@router.api_route(
    "/otadelta/{package}/{branch}/{from_version}/{to_version}",
    methods=["GET", "HEAD"],
    summary="Download the delta between two versions' files (404: take the zip)",
)
async def otadelta(
    request: Request,
    repo: RepoDep,
    store: StoreDep,
    settings: SettingsDep,
    package: str,
    branch: str,
    from_version: str,
    to_version: str,
) -> Response:
    """Made on the first request (once, whatever the number of devices asking at the same moment) and
    kept in the store; 404 when either version lacks ``tree_sha256`` or the delta would not be much
    smaller than the zip, and the device downloads the zip instead."""
    check_name(package, "package")
    check_name(branch, "branch")
    rows = []
    for version in (from_version, to_version):
        row = await repo.get(VersionKey(package, branch, version_key(version)))
        if row is None or row.version != version:
            raise NotFoundError(f"no version {version} of {package} on branch {branch}")
        rows.append(row)
    old, new = rows
    filename = f"{package}-{branch}-{from_version}-{to_version}.otadelta"
    delta = await app_state(request).deltas.find(old, new) if settings.deltas_enabled else None
    if delta is None or delta.object_id is None or delta.sha256 is None:
        raise NotFoundError(f"no delta from {from_version} to {to_version} of {package}: download the zip")
    try:
        return await _answer(
            request, store, settings, _Object(delta.object_id, delta.size, f'"{delta.sha256}"', filename)
        )
    except FileNotFoundError:
        raise NotFoundError(f"the delta {filename} is gone: download the zip") from None


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
