"""Dependencies shared by the routes."""

from typing import Annotated

from fastapi import Depends, Request

from services.service import Service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
