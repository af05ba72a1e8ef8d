"""The block index: event apply rate, overlap lookup latency at fleet scale, memory per block.

    python -m bench.index [--workers 256] [--blocks-per-worker 100000]

Workers hold chains of 64 blocks drawn from a shared pool (each chain on ~16 workers, as
popular prefixes are), receive them as "stored" events of 32 hashes (a request's new blocks in
one engine step), then 64-block prompts are looked up (prefixes of pooled chains cut at a
random length and completed with unseen blocks). Baselines in the same run: plain dict inserts
of the same hashes (apply), 64 plain dict lookups (query), and one pass over every indexed block
(removal: what removing a worker cost when it scanned the whole index).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time

from bench.common import Figure, percentile, report
from services.router.core.index import ID_BITS, BlockIndex
from tandem.kv_events import KVEvent

CHAIN = 64
EVENT_HASHES = 32
SHARING = 16
REMOVALS = 5
REMOVE_TARGET = 0.25
"""Removing a worker that holds 1/SHARING of the index's blocks must cost well under a pass
over the index (proportional to its blocks, with a few times a scan's per-block cost)."""


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=256)
    parser.add_argument("--blocks-per-worker", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args(argv)
    rng = random.Random(7)
    chains_per_worker = args.blocks_per_worker // CHAIN
    pool_chains = max(1, args.workers * chains_per_worker // SHARING)
    raw = os.urandom(16 * CHAIN * pool_chains)
    pool = [[raw[(c * CHAIN + i) * 16:(c * CHAIN + i + 1) * 16] for i in range(CHAIN)]
            for c in range(pool_chains)]
    del raw
    gc.collect()
    index = BlockIndex()
    rss_before = rss_bytes()
    apply_s = 0.0
    baseline_s = 0.0
    applied = 0
    plain: dict[bytes, int] = {}
    seq = 0
    for worker in range(args.workers):
        source = f"worker:w{worker}"
        events = []
        for chain_id in rng.sample(range(pool_chains), chains_per_worker):
            chain = pool[chain_id]
            for start in range(0, CHAIN, EVENT_HASHES):
                seq += 1
                events.append(KVEvent(seq, "stored", chain[start:start + EVENT_HASHES]))
        started = time.perf_counter()
        for event in events:
            index.apply(source, event)
        apply_s += time.perf_counter() - started
        applied += sum(len(e.hashes) for e in events)
        if worker < 16:  # baseline: the same inserts into a plain dict
            started = time.perf_counter()
            for event in events:
                for block_hash in event.hashes:
                    plain[block_hash] = 1
            baseline_s += time.perf_counter() - started
    baseline_blocks = 16 * chains_per_worker * CHAIN
    gc.collect()
    rss_index = rss_bytes() - rss_before
    del plain
    # Decoding from stream entries + apply, on a sample (the real feed's path).
    sample = [KVEvent(i, "stored", pool[i % pool_chains][:EVENT_HASHES]).encode()
              for i in range(20_000)]
    encoded = [{k.encode(): v for k, v in fields.items()} for fields in sample]
    started = time.perf_counter()
    for fields in encoded:
        index.apply("worker:w0", KVEvent.decode(fields))
    decode_apply_rate = len(encoded) * EVENT_HASHES / (time.perf_counter() - started)

    lookups: list[float] = []
    plain_lookups: list[float] = []
    holders = index._holders  # baseline: 64 bare dict lookups
    for _ in range(args.queries):
        chain = pool[rng.randrange(pool_chains)]
        cut = rng.randrange(CHAIN + 1)
        prompt = chain[:cut] + [os.urandom(16) for _ in range(CHAIN - cut)]
        started = time.perf_counter()
        index.overlaps(prompt)
        lookups.append(time.perf_counter() - started)
        started = time.perf_counter()
        for block_hash in prompt:
            holders.get(block_hash)
        plain_lookups.append(time.perf_counter() - started)
    full = index.overlaps(pool[0])
    entries = index.entries
    unique = index.unique_blocks
    removals: list[float] = []
    scans: list[float] = []
    removed_blocks = index.blocks_of("worker:w1")
    for worker in range(1, 1 + REMOVALS):
        started = time.perf_counter()
        index.remove_source(f"worker:w{worker}")
        removals.append(time.perf_counter() - started)
        bit = 1 << (ID_BITS + worker)  # baseline: one pass over the index, testing one bit
        started = time.perf_counter()
        sum(1 for _, value in list(holders.items()) if value & bit)
        scans.append(time.perf_counter() - started)
    remove_s = percentile(removals, 0.5)
    scan_s = percentile(scans, 0.5)

    figures = [
        Figure("apply rate (stored events, 32 hashes)", applied / apply_s, "blocks/s",
               baseline_blocks / baseline_s, "plain dict inserts", ">= 1e6 blocks/s",
               applied / apply_s >= 1e6),
        Figure("decode + apply rate (from stream fields)", decode_apply_rate, "blocks/s"),
        Figure("overlap lookup p50 (64 blocks)", percentile(lookups, 0.5) * 1e3, "ms",
               percentile(plain_lookups, 0.5) * 1e3, "64 dict gets"),
        Figure("overlap lookup p99 (64 blocks)", percentile(lookups, 0.99) * 1e3, "ms",
               percentile(plain_lookups, 0.99) * 1e3, "64 dict gets", "<= 1 ms",
               percentile(lookups, 0.99) <= 1e-3),
        Figure("memory per unique block", rss_index / unique, "bytes"),
        Figure("memory per (worker, block) entry", rss_index / entries, "bytes"),
        Figure(f"remove one worker ({removed_blocks} blocks), median", remove_s * 1e3, "ms",
               scan_s * 1e3, "one pass over the index",
               f"<= {REMOVE_TARGET}x the pass (its blocks: {removed_blocks / unique:.3f}x)",
               remove_s <= REMOVE_TARGET * scan_s),
    ]
    report("index", figures, {
        "workers": args.workers, "blocks_per_worker": args.blocks_per_worker,
        "unique_blocks": unique, "entries": entries, "index_rss_bytes": rss_index,
        "workers_holding_pool_chain_0": len(full.device),
        "command": "python -m bench.index",
    })


if __name__ == "__main__":
    main()
