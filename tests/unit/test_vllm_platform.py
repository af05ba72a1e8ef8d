"""The vLLM engine's setup follows the platform vLLM runs on (faked here: no GPU needed)."""

from __future__ import annotations

import dataclasses

import pytest
import vllm
import vllm.platforms

from tandem.engines import vllm_platform
from tandem.engines.vllm_engine import VllmEngine, VllmSettings
from tandem.engines.vllm_platform import GIB, platform_setup


@dataclasses.dataclass
class FakePlatform:
    device_name: str

    def is_cpu(self) -> bool:
        return self.device_name == "cpu"


@pytest.mark.parametrize(("device", "cores", "environment", "engine_args"), [
    ("cpu", None, {"VLLM_CPU_KVCACHE_SPACE": "3"}, {}),
    ("cpu", "0-1", {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "0-1"}, {}),
    ("cuda", None, {}, {"kv_cache_memory_bytes": 3 * GIB}),
    ("rocm", None, {}, {"kv_cache_memory_bytes": 3 * GIB}),
])
def test_the_setup_follows_the_platform(device: str, cores: str | None,
                                        environment: dict[str, str],
                                        engine_args: dict[str, int]) -> None:
    setup = platform_setup(FakePlatform(device), "0.32.0", 3, cores)
    assert setup.fingerprint == f"vllm-0.32.0-{device}"
    assert setup.environment == environment
    assert setup.engine_args == engine_args


def test_a_core_binding_on_a_gpu_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"cpu_cores.*cuda"):
        platform_setup(FakePlatform("cuda"), "0.32.0", 1, "0")


def test_the_engine_takes_its_setup_from_vllms_current_platform(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm.platforms, "current_platform", FakePlatform("cuda"))
    engine = VllmEngine(VllmSettings(model_dir="/nonexistent", served_model_name="m",
                                     kv_cache_gib=2))
    assert engine.fingerprint.endswith("-cuda")
    assert engine.platform == platform_setup(FakePlatform("cuda"), vllm.__version__, 2, None)


def test_this_machine_is_the_cpu_build() -> None:
    assert vllm_platform.current_setup(1, None).fingerprint.endswith("-cpu")
