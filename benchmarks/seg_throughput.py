"""Segmentation training throughput: one process against N processes under torchrun (gloo, CPU).

Generates a small benchmark set (``wsss.data.synth``, 128 px) unless ``--data`` names one, then
for each process count runs ``python -m torch.distributed.run --standalone --nproc_per_node=N``
on this file as a worker. Every worker trains the synth recipe's network
(``deeplab_v2_resnet18_w16``) with the same global batch (so N processes take batch / N images
each) and one thread (``OMP_NUM_THREADS=1``); rank 0 times every update through the training
loop's callback. The script prints training images per second (global batch x timed updates /
seconds, after ``--warmup`` untimed updates; data loading, forward, backward, the gradient
all-reduce and the optimizer step included; start-up, validation and checkpoints excluded) and
the ratio to one process. With N processes on N free cores the ideal ratio is N; the gradient
all-reduce, per-process data loading and a loaded machine take it below that.

Examples::

    .venv/bin/python benchmarks/seg_throughput.py
    .venv/bin/python benchmarks/seg_throughput.py --processes 1 2 --iterations 30 --batch 8
    .venv/bin/python benchmarks/seg_throughput.py --data /tmp/synth   # an existing synth set
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def worker(data: str, out: str, iterations: int, batch: int, warmup: int) -> None:
    from wsss.data.voc import VOCDataset
    from wsss.segmentation.train import seg_recipe, train_segmentation

    torch.set_num_threads(1)
    config = seg_recipe("synth").replace(epochs=None, iterations=warmup + iterations, batch_size=batch,
                                         checkpoint_every=10**9, num_workers=0)
    stamps: list[float] = []
    result = train_segmentation(VOCDataset(data, "train"), None, config, device="cpu", out_dir=out,
                                progress=False, resume=False,
                                callback=lambda iteration, loss: stamps.append(time.perf_counter()))
    if result.world_size == 1 or int(os.environ.get("RANK", "0")) == 0:
        # stamps[warmup - 1] is the end of the last untimed update.
        seconds = stamps[-1] - stamps[warmup - 1]
        Path(out, "throughput.json").write_text(json.dumps({
            "processes": result.world_size, "batch": batch, "timed_iterations": iterations,
            "seconds": seconds, "images_per_second": batch * iterations / seconds,
            "last_loss": result.history[-1]["loss"],
        }))


def run(processes: int, data: Path, work: Path, args: argparse.Namespace) -> dict:
    out = work / f"np{processes}"
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    environment["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(Path(__file__).resolve()), "--worker", str(data), str(out), str(args.iterations),
               str(args.batch), str(args.warmup)]
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.exit(f"{processes} process(es) failed:\n{finished.stderr[-3000:]}")
    report = json.loads((out / "throughput.json").read_text())
    report["wall_seconds"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=20, help="timed updates")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--batch", type=int, default=8, help="global batch (the synth recipe's)")
    parser.add_argument("--images", type=int, default=64, help="images to generate (without --data)")
    parser.add_argument("--data", help="an existing VOC-layout set at 128 px (default: generate one)")
    args = parser.parse_args()
    for processes in args.processes:
        if args.batch % processes:
            parser.error(f"--batch {args.batch} is not divisible by {processes} processes")

    with tempfile.TemporaryDirectory(prefix="seg_throughput_") as tmp:
        work = Path(tmp)
        if args.data:
            data = Path(args.data)
        else:
            from wsss.data.synth import SynthConfig, generate

            data = work / "synth"
            generate(data, SynthConfig(train=args.images, val=0, ood=0), progress=False)
        print(f"segmentation training throughput, deeplab_v2_resnet18_w16 at 128 px, global batch "
              f"{args.batch}, {args.iterations} timed updates after {args.warmup}, 1 thread per process, "
              f"{os.cpu_count()} CPUs (os.getloadavg {os.getloadavg()[0]:.1f} at start)")
        results = [run(processes, data, work, args) for processes in args.processes]
    base = results[0]["images_per_second"]
    print(f"{'processes':>9} {'images/s':>9} {'s/update':>9} {'ratio':>6} {'wall s':>7}")
    for result in results:
        per_update = result["seconds"] / result["timed_iterations"]
        print(f"{result['processes']:>9} {result['images_per_second']:>9.2f} {per_update:>9.3f} "
              f"{result['images_per_second'] / base:>6.2f} {result['wall_seconds']:>7.1f}")


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
