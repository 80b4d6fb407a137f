"""What users would pick instead: the same MLP in PyTorch on the CPU (optional; never a dependency).

    python benchmarks/torch_ref.py --ranks 1 --threads 1 --batch-size 256 --epochs 3
    python benchmarks/torch_ref.py --ranks 2 --threads 1 --batch-size 256 --epochs 3   # DDP, gloo

784-256-128-10, ReLU, cross-entropy, SGD lr 0.1 momentum 0.9, the same synthetic rows as parsgd.
With --ranks 2 each rank takes half of every global batch (the same global batch size, so the same
number of steps per epoch) and DistributedDataParallel all-reduces gradients over gloo on loopback.
Epoch time is rank 0's, between barriers, training steps only. Prints one JSON object, or
{"skipped": reason} with exit status 0 when torch is not importable.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from textbook_pool import load_data  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, a, port: int, out_q):
    import torch
    import torch.nn as nn
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    if a.ranks > 1:
        import torch.distributed as dist
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=a.ranks)
    x, y = load_data(a.num_samples, a.seed, a.dtype)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(a.seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 10)).to(dtype)
    if a.ranks > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    loss_fn = nn.CrossEntropyLoss()
    n, B = len(y), a.batch_size
    times = []
    for epoch in range(a.epochs):
        order = torch.from_numpy(np.random.default_rng([a.seed, epoch]).permutation(n))
        if a.ranks > 1:
            dist.barrier()
        t0 = time.perf_counter()
        for lo in range(0, n, B):
            idx = order[lo:lo + B]
            mine = idx.tensor_split(a.ranks)[rank]
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[mine]), y[mine]).backward()
            opt.step()
        if a.ranks > 1:
            dist.barrier()
        times.append(time.perf_counter() - t0)
    if a.ranks > 1:
        dist.destroy_process_group()
    if rank == 0:
        out_q.put({"epoch_times": times, "steps_per_epoch": -(-n // B), "torch": torch.__version__,
                   "ranks": a.ranks, "threads_per_rank": a.threads})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--num-samples", type=int, default=60_000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    try:
        import torch  # noqa: F401
        import torch.multiprocessing as tmp
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip cleanly
        print(json.dumps({"skipped": f"torch not importable ({type(exc).__name__}: {exc})"}))
        return
    q = tmp.get_context("spawn").SimpleQueue()
    if a.ranks == 1:
        _train(0, a, 0, q)
    else:
        tmp.spawn(_train, args=(a, _free_port(), q), nprocs=a.ranks, join=True)
    print(json.dumps(q.get()))


if __name__ == "__main__":
    main()
