"""The resumable, shardable sample loop shared by POPE and CHAIR.

Samples are cut into fixed global batches (chunks of ``batch_size`` in sample order) and rank r of W takes batches
r, r+W, ... . Because a batch always holds the same samples, padding and therefore every generated token are the same
whether one process or many ran them, and whether the run was interrupted or not. Each rank appends finished samples
to its own JSONL shard; after a barrier, rank 0 merges the shards (first record per key wins), checks that nothing is
missing and writes ``samples.jsonl`` and the results atomically. On ``--resume`` every shard in the run directory
(whatever world size wrote it) counts as done work, and a batch is rerun only if one of its samples is missing.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from .errors import EvalInputError
from .io import JsonlAppender, read_jsonl, write_jsonl_atomic

SHARDS = "shards"
SAMPLES = "samples.jsonl"


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the launcher's environment (``accelerate launch``/``torchrun``)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def barrier():
    """Wait for every rank (a gloo group is enough: only a barrier is needed, so it works on CPU and GPU alike)."""
    rank, world, _ = dist_info()
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(hours=6))
    dist.barrier()


def batches(samples: list[dict], batch_size: int) -> list[list[dict]]:
    return [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]


def done_records(run_dir) -> dict[str, dict]:
    """Finished samples by key from every shard (and a previous merge); a torn last line is ignored."""
    run_dir = Path(run_dir)
    files = sorted((run_dir / SHARDS).glob("rank*.jsonl")) if (run_dir / SHARDS).is_dir() else []
    if (run_dir / SAMPLES).is_file():
        files.insert(0, run_dir / SAMPLES)
    out: dict[str, dict] = {}
    for f in files:
        try:
            recs = read_jsonl(f)
        except ValueError as exc:
            raise EvalInputError(f"{exc}: only a torn last line is expected after a crash; delete the damaged "
                                 "line or start again with --overwrite") from None
        for rec in recs:
            out.setdefault(rec["key"], rec)
    return out


def has_previous_work(run_dir) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / SAMPLES).is_file() or any((run_dir / SHARDS).glob("rank*.jsonl"))


def run_samples(samples: list[dict], work, run_dir, *, batch_size: int, progress=None) -> None:
    """Run ``work(batch) -> records`` over this rank's unfinished batches, appending records to its shard."""
    rank, world, _ = dist_info()
    run_dir = Path(run_dir)
    done = set(done_records(run_dir))
    mine = [b for j, b in enumerate(batches(samples, batch_size)) if j % world == rank]
    todo = [b for b in mine if any(s["key"] not in done for s in b)]
    total = sum(len(b) for b in todo)
    with JsonlAppender(run_dir / SHARDS / f"rank{rank}.jsonl") as out:
        bar = progress(total) if progress and total else None
        try:
            for batch in todo:
                records = work(batch)
                out.write_many(records)
                if bar:
                    bar(len(batch))
        finally:
            if bar:
                bar(None)


def merge(samples: list[dict], run_dir) -> list[dict]:
    """All records in sample order; every sample must be present. Writes ``samples.jsonl`` atomically."""
    recs = done_records(run_dir)
    missing = [s["key"] for s in samples if s["key"] not in recs]
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no output in {run_dir} (first: {missing[:3]}); "
                           "rerun with --resume")
    ordered = [recs[s["key"]] for s in samples]
    write_jsonl_atomic(Path(run_dir) / SAMPLES, ordered)
    return ordered
