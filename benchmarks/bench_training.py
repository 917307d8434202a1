"""Training speed: ms per batch, rows per second and peak RSS, at N=100 and N=150.

    python benchmarks/bench_training.py [--batches 30] [--reference-batches 2]

One torch thread, 10 rows per batch of the synthetic corpus, the first batches skipped as
warm-up. Each configuration runs in a child process so its peak RSS is its own. The
`reference` rows run the original's one-item-at-a-time step (no sleeps) on the same data in
the same run, so the speed-up is a ratio of two measurements on the same (noisy) machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time

WARMUP = 2
TARGET_MS_N150 = 150.0


def measure(field_size: int, batches: int, reference: bool, queue: mp.Queue) -> None:
    import torch

    from quadra_pipeline.data import iter_batches, open_source
    from quadra_pipeline.model import FieldTrainer, QuadraModel
    from quadra_pipeline.model.reference import reference_train_items

    torch.set_num_threads(1)
    model = QuadraModel(field_size, seed=0)
    trainer = FieldTrainer(model, train_items=reference_train_items) if reference else FieldTrainer(model)
    seconds, rows = [], 0
    for i, batch in enumerate(iter_batches(open_source("synthetic", seed=0), 10)):
        if i >= batches + WARMUP:
            break
        started = time.perf_counter()
        metrics = trainer.step(batch.texts)
        elapsed = time.perf_counter() - started
        if i >= WARMUP:
            seconds.append(elapsed)
            rows += batch.rows_consumed
    queue.put(
        {
            "impl": "reference" if reference else "batched",
            "N": field_size,
            "batches": len(seconds),
            "ms_per_batch": 1000 * statistics.median(seconds),
            "rows_per_s": rows / sum(seconds),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "final_reward": metrics.reward,
        }
    )


def run(field_size: int, batches: int, reference: bool) -> dict:
    queue: mp.Queue = mp.get_context("spawn").Queue()
    process = mp.get_context("spawn").Process(target=measure, args=(field_size, batches, reference, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=30, help="measured batches per configuration (30)")
    parser.add_argument("--reference-batches", type=int, default=2, help="measured batches of the reference (2; 0 skips it)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    rows = []
    for n in (100, 150):
        rows.append(run(n, args.batches, reference=False))
        if args.reference_batches:
            rows.append(run(n, args.reference_batches, reference=True))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"| impl | N | batches | ms/batch (median) | rows/s | peak RSS MB | speed-up vs reference |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ref = next((r for r in rows if r["impl"] == "reference" and r["N"] == row["N"]), None)
        ratio = f"{ref['ms_per_batch'] / row['ms_per_batch']:.1f}x" if ref else "-"
        print(
            f"| {row['impl']} | {row['N']} | {row['batches']} | {row['ms_per_batch']:.1f} | {row['rows_per_s']:.1f} "
            f"| {row['peak_rss_mb']:.0f} | {ratio} |"
        )
    n150 = next(r for r in rows if r["impl"] == "batched" and r["N"] == 150)
    verdict = "meets" if n150["ms_per_batch"] <= TARGET_MS_N150 else "MISSES"
    print(f"\nN=150: {n150['ms_per_batch']:.1f} ms per batch {verdict} the target of {TARGET_MS_N150:.0f} ms.")
    return 0 if n150["ms_per_batch"] <= TARGET_MS_N150 else 1


if __name__ == "__main__":
    sys.exit(main())
