"""Pure logic of the decode worker: no I/O, no clock, no asyncio."""
