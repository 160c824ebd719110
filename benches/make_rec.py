#!/usr/bin/env python3
"""Writes an insightface-layout MXNet RecordIO set without MXNet, for benchmarks:
record 0 = header [first identity key, end], images 1..first (112px JPEGs, 50 per
identity, labels stored contiguously as insightface stores them), then one identity
record [first image, end] per class, plus `train.idx` and `property`.

    python benches/make_rec.py OUT_DIR MIB
"""
import io
import os
import random
import struct
import sys

from PIL import Image, ImageDraw

MAGIC = 0xCED7230A
PER_ID = 50


def frame(out, payload):
    """MXNet's framing: split before every 4-aligned magic (dropped), flags 1/2/3, pad to 4."""
    magic = struct.pack("<I", MAGIC)
    parts, start, i = [], 0, payload.find(magic)
    while i >= 0:
        if i % 4 == 0:
            parts.append(payload[start:i])
            start = i + 4
        i = payload.find(magic, i + 1)
    parts.append(payload[start:])
    for n, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else 1 if n == 0 else 3 if n == len(parts) - 1 else 2
        out.write(struct.pack("<II", MAGIC, (flag << 29) | len(part)))
        out.write(part)
        out.write(b"\0" * (-len(part) % 4))


def header(labels, image=b""):
    """`mx.recordio.pack` with a label array: IfQQ then the float32 labels."""
    return struct.pack("<IfQQ", len(labels), 0.0, 0, 0) + struct.pack(f"<{len(labels)}f", *labels) + image


def jpegs(n, rng):
    out = []
    for _ in range(n):
        img = Image.new("RGB", (112, 112), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(img)
        for _ in range(40):
            x, y = rng.randrange(112), rng.randrange(112)
            draw.ellipse((x, y, x + rng.randrange(5, 40), y + rng.randrange(5, 40)), fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def main():
    out_dir, mib = sys.argv[1], float(sys.argv[2])
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(0)
    pool = jpegs(400, rng)
    mean = sum(map(len, pool)) / len(pool)
    n = max(PER_ID, int(mib * 2**20 / (mean + 40)) // PER_ID * PER_ID)
    classes = n // PER_ID
    first = n + 1
    offsets = []
    with open(os.path.join(out_dir, "train.rec"), "wb") as rec:
        def write(payload):
            offsets.append(rec.tell())
            frame(rec, payload)
        write(header([float(first), float(first + classes)]))
        for i in range(n):
            write(struct.pack("<IfQQ", 0, float(i // PER_ID), i + 1, 0) + pool[i % len(pool)])
        for c in range(classes):
            write(header([float(1 + c * PER_ID), float(1 + (c + 1) * PER_ID)]))
    with open(os.path.join(out_dir, "train.idx"), "w") as idx:
        idx.writelines(f"{k}\t{o}\n" for k, o in enumerate(offsets))
    with open(os.path.join(out_dir, "property"), "w") as prop:
        prop.write(f"{classes},112,112\n")
    print(f"{n} images of {classes} identities, {os.path.getsize(os.path.join(out_dir, 'train.rec')) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
