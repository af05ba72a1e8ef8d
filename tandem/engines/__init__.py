"""Engine adapters: the only code that knows an inference engine."""
