"""The simulated engine: a test instrument for scale and load tests, never the default."""

from tandem.engines.mock.engine import MockEngine
from tandem.engines.mock.perf import PerfProfile, available_profiles, load_profile
from tandem.engines.mock.settings import MockSettings

__all__ = ["MockEngine", "MockSettings", "PerfProfile", "available_profiles", "load_profile"]
