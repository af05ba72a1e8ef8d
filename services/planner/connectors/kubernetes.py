"""The Kubernetes connector: sets ``spec.replicas`` of the prefill and decode Deployments
through the scale subresource with the official client (``kubernetes``), and reads each pool
from the Deployment's status (ready replicas serve, the rest start) and its pods being
deleted (draining: a worker drains on the SIGTERM the pod gets, within
``terminationGracePeriodSeconds``). The client is synchronous: its calls run in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from services.planner.connectors.base import Fleet, Pool, PoolState
from services.planner.settings import KubernetesSettings


def api_client(settings: KubernetesSettings) -> Any:
    """A client for ``--kubernetes-api-url`` (e.g. ``kubectl proxy``), the kubeconfig at
    ``--kubernetes-kubeconfig``, or the pod's service account (in the cluster)."""
    from kubernetes import client, config

    if settings.api_url:
        configuration = client.Configuration()
        configuration.host = settings.api_url
        return client.ApiClient(configuration)
    if settings.kubeconfig:
        return config.new_client_from_config(config_file=settings.kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


class KubernetesConnector:
    """Scales Deployments through the Kubernetes API."""

    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self.deployments: dict[Pool, str] = {"prefill": settings.prefill_deployment,
                            "decode": settings.decode_deployment}
        self._client: Any = None

    async def start(self) -> None:
        from kubernetes import client

        self._client = await asyncio.to_thread(api_client, self.settings)
        self.apps = client.AppsV1Api(self._client)
        self.core = client.CoreV1Api(self._client)
        await self.observe()  # fails now when a Deployment is missing or access is denied

    async def apply(self, desired: Mapping[Pool, int], sequence: int) -> None:
        for pool, count in sorted(desired.items()):
            await asyncio.to_thread(
                self.apps.patch_namespaced_deployment_scale, self.deployments[pool],
                self.settings.namespace, {"spec": {"replicas": count}},
                _request_timeout=self.settings.timeout_s)

    def _pool(self, deployment: str) -> PoolState:
        namespace, timeout = self.settings.namespace, self.settings.timeout_s
        found = self.apps.read_namespaced_deployment(deployment, namespace,
                                                     _request_timeout=timeout)
        status: Any = found.status
        replicas, ready = status.replicas or 0, status.ready_replicas or 0
        spec: Any = found.spec
        labels = spec.selector.match_labels or {}
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector,
                                             _request_timeout=timeout)
        items: list[Any] = pods.items
        draining = sum(pod.metadata.deletion_timestamp is not None for pod in items)
        return PoolState(ready=ready, starting=max(0, replicas - ready), draining=draining)

    async def observe(self) -> Fleet:
        return {pool: await asyncio.to_thread(self._pool, deployment)
                for pool, deployment in self.deployments.items()}

    async def close(self) -> None:
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
