"""Package files: ``/otafiles/<package>/<branch>/<package>-<branch>-<version>.zip``."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from otakit.errors import NotFoundError, ValidationError
from otakit.names import check_name
from otakit.server.deps import RepoDep, StoreDep
from otakit.server.metrics import count_sent
from otakit.server.repository import VersionKey
from otakit.server.responses import ObjectFileResponse
from otakit.versions import version_key
from otakit.web import etag_matches


class _Download(ObjectFileResponse):
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


async def _serve(request: Request, repo: RepoDep, store: StoreDep, path: str) -> Response:
    package, branch, version = _parse(path)
    key = VersionKey(package, branch, version_key(version))
    for _ in range(3):
        row = await repo.get(key)
        if row is None or row.version != version:
            raise NotFoundError(f"no file {package}-{branch}-{version}.zip")
        etag = f'"{row.sha256}"'
        if etag_matches(request, etag):
            return Response(status_code=304, headers={"ETag": etag, "Accept-Ranges": "bytes"})
        try:
            file = await anyio.to_thread.run_sync(store.open_object, row.object_id)
        except FileNotFoundError:
            continue  # replaced by a forced upload between the lookup and the open: look again
        return _Download(file, etag=etag, filename=f"{package}-{branch}-{version}.zip")
    raise NotFoundError(f"no file {package}-{branch}-{version}.zip")


@router.api_route("/otafiles/{path:path}", methods=["GET", "HEAD"], summary="Download a package file")
async def otafiles(request: Request, repo: RepoDep, store: StoreDep, path: str) -> Response:
    return await _serve(request, repo, store, path)


@router.api_route("/ota-files/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
async def ota_files(request: Request, repo: RepoDep, store: StoreDep, path: str) -> Response:
    return await _serve(request, repo, store, path)
