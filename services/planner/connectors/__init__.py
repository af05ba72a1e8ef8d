"""The connectors, one file each, registered in ``CONNECTORS`` (name → builder); the names
are ``settings.ConnectorName``'s (a test keeps them equal)."""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from services.planner.connectors.base import Connector
from services.planner.settings import PlannerServiceSettings

Builder = Callable[[PlannerServiceSettings, aioredis.Redis], Connector]


def _local(settings: PlannerServiceSettings, client: aioredis.Redis) -> Connector:
    from services.planner.connectors.local import LocalConnector

    return LocalConnector(client, settings.control.namespace)


def _compose(settings: PlannerServiceSettings, client: aioredis.Redis) -> Connector:
    from services.planner.connectors.compose import ComposeConnector

    return ComposeConnector(settings.compose)


def _kubernetes(settings: PlannerServiceSettings, client: aioredis.Redis) -> Connector:
    from services.planner.connectors.kubernetes import KubernetesConnector

    return KubernetesConnector(settings.kubernetes)


def _virtual(settings: PlannerServiceSettings, client: aioredis.Redis) -> Connector:
    from services.planner.connectors.virtual import VirtualConnector

    return VirtualConnector(client, settings.control.namespace)


CONNECTORS: dict[str, Builder] = {
    "local": _local, "compose": _compose, "kubernetes": _kubernetes, "virtual": _virtual}


def build_connector(settings: PlannerServiceSettings, client: aioredis.Redis) -> Connector:
    return CONNECTORS[settings.connector](settings, client)
