"""Liveness: the seed's ``/test`` and a health check for load balancers."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from otakit.server.deps import RepoDep, StoreDep
from otakit.web import answer

router = APIRouter(tags=["meta"])


@router.get("/test", summary="The server answers")
async def test() -> Response:
    return answer(200)


@router.get("/healthz", summary="Database and file store reachable (else 503)")
async def healthz(repo: RepoDep, store: StoreDep) -> Response:
    await repo.ping()
    await store.ping()
    return answer(200)
