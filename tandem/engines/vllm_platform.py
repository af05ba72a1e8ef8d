"""What the vLLM engine sets for the platform vLLM runs on (``vllm.platforms.current_platform``):
the fingerprint every response carries, the environment the build reads, and the engine
arguments that size the KV cache.

The CPU build sizes its KV cache from ``VLLM_CPU_KVCACHE_SPACE`` (GiB; unset, it reserves most
of the node's memory) and binds its threads through ``VLLM_CPU_OMP_THREADS_BIND``. A GPU build
reads neither: the same size becomes ``kv_cache_memory_bytes`` (per GPU, instead of a share of
``gpu_memory_utilization``), and a core binding is refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

GIB = 1 << 30


class Platform(Protocol):
    """The part of vLLM's ``Platform`` this module reads."""

    device_name: str
    """"cpu", "cuda", "rocm", "xpu", ..."""

    def is_cpu(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class PlatformSetup:
    fingerprint: str
    """``system_fingerprint`` of every response: the vLLM version and the device kind."""
    environment: dict[str, str]
    """Variables set before the engine starts."""
    engine_args: dict[str, Any]
    """Extra ``AsyncEngineArgs``."""


def platform_setup(platform: Platform, vllm_version: str, kv_cache_gib: int,
                   cpu_cores: str | None) -> PlatformSetup:
    """The setup of an engine with a KV cache of ``kv_cache_gib`` GiB whose threads bind to
    ``cpu_cores`` (CPU build only) on ``platform``."""
    fingerprint = f"vllm-{vllm_version}-{platform.device_name}"
    if platform.is_cpu():
        environment = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
        if cpu_cores:
            environment["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
        return PlatformSetup(fingerprint, environment, {})
    if cpu_cores:
        raise ValueError(f"cpu_cores binds the CPU build's threads; vLLM runs on "
                         f"{platform.device_name} here: unset it")
    return PlatformSetup(fingerprint, {}, {"kv_cache_memory_bytes": kv_cache_gib * GIB})


def current_setup(kv_cache_gib: int, cpu_cores: str | None) -> PlatformSetup:
    """``platform_setup`` for the platform vLLM detects on this machine."""
    import vllm
    from vllm.platforms import current_platform

    return platform_setup(current_platform, vllm.__version__, kv_cache_gib, cpu_cores)
