#!/usr/bin/env python3
"""The seed's Python data loader, as the baseline for `trainer bench data`.

What the seed did per sample: seek + read the record's bytes from the .bin (offsets from
the .idx), PIL decode, resize to the training size, random horizontal flip,
(x - 127.5) / 127.5, into a numpy NCHW float32 batch. Single process, uniform random
order. Prints per-repetition rates and the median (and a JSON line with --json).

    python benches/python_loader.py SHARD.idx [SHARD.idx ...] [--size 112] [--batch-size 50]
        [--batches 40] [--reps 5] [--seed 0] [--json]
"""
import argparse
import io
import json
import os
import random
import statistics
import sys
import time

import numpy as np
from PIL import Image


def read_idx(idx_path):
    """(bin_path, start, end) per record; v1 (`#` header, escaped paths) or the seed's 4 columns."""
    bin_path = os.path.splitext(idx_path)[0] + ".bin"
    records = []
    with open(idx_path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\r\n").split("\t")
            records.append((bin_path, int(cols[2]), int(cols[3])))
    return records


def load_batch(files, records, order, size, rng):
    batch = np.empty((len(order), 3, size, size), dtype=np.float32)
    nbytes = 0
    for slot, i in enumerate(order):
        bin_path, start, end = records[i]
        f = files[bin_path]
        f.seek(start)
        data = f.read(end - start)
        nbytes += len(data)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = (np.asarray(img, dtype=np.float32) - 127.5) / 127.5
        batch[slot] = x.transpose(2, 0, 1)
    return batch, nbytes


def time_once(records, args, seed):
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    files = {p: open(p, "rb") for p in {r[0] for r in records}}
    start, cpu_start = time.perf_counter(), time.process_time()
    images = nbytes = 0
    pos = 0
    for _ in range(args.batches):
        if pos + args.batch_size > len(order):
            rng.shuffle(order)
            pos = 0
        batch, b = load_batch(files, records, order[pos:pos + args.batch_size], args.size, rng)
        pos += args.batch_size
        images += batch.shape[0]
        nbytes += b
    secs = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    for f in files.values():
        f.close()
    return images / secs, nbytes / secs / 1e6, cpu * 1e3 / images


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("idx", nargs="+", help="shard .idx files (the .bin sits next to each)")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    records = [r for idx in args.idx for r in read_idx(idx)]
    if not records:
        sys.exit("no records")
    print(f"python loader: {len(records)} records, size {args.size}, batch {args.batch_size}, "
          f"{args.batches} batches x {args.reps} reps")
    rates = []
    for rep in range(args.reps):
        img_s, mb_s, cpu_ms = time_once(records, args, args.seed + rep)
        print(f"  rep {rep + 1}: {img_s:8.1f} img/s {mb_s:7.1f} MB/s {cpu_ms:6.3f} CPU ms/img")
        rates.append((img_s, mb_s, cpu_ms))
    img_s = statistics.median(r[0] for r in rates)
    mb_s = statistics.median(r[1] for r in rates)
    cpu_ms = statistics.median(r[2] for r in rates)
    print(f"median: {img_s:.1f} img/s, {mb_s:.1f} MB/s, {cpu_ms:.3f} CPU ms/img (python, 1 process)")
    if args.json:
        print(json.dumps({"bench": "python_loader", "images_per_s": img_s, "mb_per_s": mb_s, "cpu_ms_per_image": cpu_ms,
                          "size": args.size, "batch_size": args.batch_size, "reps": args.reps}))


if __name__ == "__main__":
    main()
