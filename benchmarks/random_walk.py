"""IRN random walk: the reference's dense transition matrix against the sparse walk.

For each image size (width x height, walked at stride 4 as IRN does), one subprocess runs
``random_walk_dense`` (IRN ``propagate_to_edge``: a dense N x N matrix squared ``exp_times``
times) and another runs ``random_walk`` (sparse matrix, 2 ** exp_times products with the maps).
Each subprocess reports the wall and CPU seconds of the walk alone and its own peak resident
memory (``getrusage(RUSAGE_SELF).ru_maxrss``, which sees every allocation, torch's included), and
that peak just before the walk (Python, torch and the inputs), so the walk's own memory is the
difference. The parent prints both, the dense/sparse ratios, and the largest absolute difference
between the two results.

The dense walk's peak is while building the matrix: the padded (N_p x N_p) float32 matrix and
its cropped N x N copy (N_p counts the reference's padding of 5 rows and 10 columns); the squaring
then holds two N x N matrices. When that estimate exceeds ``--memory-limit`` (24 GiB) or the
dense time extrapolated as N^3 from a measured size exceeds ``--time-limit`` (1 hour of CPU), the
dense run is skipped and the script prints what it would need (before any measurement, the time
is estimated at 100 GFLOP/s per thread).

Inputs are random (seeded): ``--channels`` maps in [0, 1] and a boundary map ``u ** 3`` (mostly
low, a few strong boundaries); the walk's cost does not depend on the values.

Examples::

    .venv/bin/python benchmarks/random_walk.py                   # 500x375 and 1000x750, 1 thread
    .venv/bin/python benchmarks/random_walk.py --sizes 200x150 --threads 2
    .venv/bin/python benchmarks/random_walk.py --sizes 1000x750 --skip-dense
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024**3


def stride4(width: int, height: int) -> tuple[int, int]:
    """(rows, cols) of the stride-4 grid of a width x height image (ceil, as IRN)."""
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


def child(args: argparse.Namespace) -> None:
    """Run one walk and print a JSON line: seconds, peak bytes, bytes before the walk."""
    import torch

    from wsss.refine.random_walk import random_walk, random_walk_dense

    torch.set_num_threads(args.threads)
    rows, cols = stride4(args.width, args.height)
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(args.channels, rows, cols, generator=generator)
    edge = torch.rand(rows, cols, generator=generator) ** 3
    walk = random_walk_dense if args.child == "dense" else random_walk
    walk(maps[:, :8, :12], edge[:8, :12], exp_times=1)  # load the kernels before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    wall, cpu = time.perf_counter(), time.process_time()
    result = walk(maps, edge, exp_times=args.exp_times)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(args.out, result.numpy())
    print(json.dumps({"wall": wall, "cpu": cpu, "peak": peak, "before": before}))


def run_child(kind: str, width: int, height: int, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--width", str(width), "--height", str(height),
               "--channels", str(args.channels), "--exp-times", str(args.exp_times),
               "--threads", str(args.threads), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise SystemExit(f"{kind} walk at {width}x{height} failed:\n{finished.stderr}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def describe(kind: str, measured: dict) -> str:
    walk_alone = measured["peak"] - measured["before"]
    return (f"  {kind:6s} wall {measured['wall']:9.2f} s  cpu {measured['cpu']:9.2f} s  "
            f"peak {measured['peak'] / GIB:7.3f} GiB  walk alone {walk_alone / GIB:7.3f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["500x375", "1000x750"], help="WIDTHxHEIGHT of images")
    parser.add_argument("--channels", type=int, default=3, help="maps walked (IRN: the image's classes)")
    parser.add_argument("--exp-times", type=int, default=8, help="2 ** exp_times steps (IRN: 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-limit", type=float, default=24.0, help="GiB the dense run may use")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="CPU seconds the dense run may take")
    parser.add_argument("--skip-dense", action="store_true", help="estimate the dense run only")
    parser.add_argument("--child", choices=["dense", "sparse"], help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"random walk: {args.channels} maps, {2 ** args.exp_times} steps, radius 5, beta 10, "
          f"{args.threads} thread(s); wall times depend on the machine's load, CPU times less so")
    bytes_per_entry = None  # measured dense walk bytes / N^2, for extrapolating
    dense_seconds_per_n3 = None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            width, height = (int(v) for v in size.lower().split("x"))
            rows, cols = stride4(width, height)
            count = rows * cols
            print(f"\n{width}x{height} image -> {cols}x{rows} grid at stride 4, N = {count} pixels")
            sparse = run_child("sparse", width, height, args, Path(tmp) / "sparse.npy")
            print(describe("sparse", sparse))
            padded = (rows + 5) * (cols + 10)
            memory = 4 * (padded**2 + count**2)  # building: padded matrix + cropped copy, float32
            if dense_seconds_per_n3 is not None:
                seconds, basis = dense_seconds_per_n3 * count**3, "N^3 from the last measured size"
            else:  # exp_times products of N x N matrices, at an assumed 100 GFLOP/s per thread
                seconds, basis = 2 * args.exp_times * count**3 / (1e11 * args.threads), "at 100 GFLOP/s"
            if args.skip_dense or memory > args.memory_limit * GIB or seconds > args.time_limit:
                line = f"  dense  skipped: would need about {memory / GIB:.1f} GiB"
                if bytes_per_entry is not None:
                    line += f" ({bytes_per_entry * count**2 / GIB:.1f} GiB at the measured bytes per entry)"
                line += f" and {seconds:.0f} s of CPU ({basis})"
                print(line + f"; limits {args.memory_limit:g} GiB, {args.time_limit:g} s")
                continue
            dense = run_child("dense", width, height, args, Path(tmp) / "dense.npy")
            print(describe("dense", dense))
            difference = np.abs(np.load(Path(tmp) / "dense.npy").astype(np.float64)
                                - np.load(Path(tmp) / "sparse.npy")).max()
            bytes_per_entry = (dense["peak"] - dense["before"]) / count**2
            dense_seconds_per_n3 = dense["cpu"] / count**3
            walk_dense = dense["peak"] - dense["before"]
            walk_sparse = max(sparse["peak"] - sparse["before"], 1)
            print(f"  dense / sparse: wall x{dense['wall'] / sparse['wall']:.1f}, "
                  f"cpu x{dense['cpu'] / sparse['cpu']:.1f}, peak memory x{dense['peak'] / sparse['peak']:.1f}, "
                  f"walk memory x{walk_dense / walk_sparse:.0f}")
            print(f"  max |dense - sparse| = {difference:.2e} "
                  "(dense is float32 throughout, sparse accumulates in float64)")


if __name__ == "__main__":
    main()
