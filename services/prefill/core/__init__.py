"""Pure logic of the prefill worker: no I/O, no clock, no asyncio."""
