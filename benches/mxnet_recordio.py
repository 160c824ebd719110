#!/usr/bin/env python3
"""MXNet's own RecordIO, as the reference for the Rust reader (src/recordio).

  mxnet_recordio.py write DIR           DIR/train.{rec,idx} in insightface's layout and
                                        DIR/plain.{rec,idx}, written by MXIndexedRecordIO
  mxnet_recordio.py read PREFIX...      every record of each PREFIX.rec by key through the
                                        idx, one JSON object a line (with its "file"), after
                                        checking that reading front to back without the idx
                                        gives the same records
  mxnet_recordio.py large REC MIB       a plain set of about MIB MiB (with its .idx; REC
                                        must end in .rec) for throughput runs

Needs mxnet 1.9.1 and numpy < 1.24 (Python 3.11 works).
"""
import json
import random
import struct
import sys

import mxnet as mx
import numpy as np

MAGIC = struct.pack('<I', 0xced7230a)


def image_bytes(seed, size, magic_at=()):
    """Random bytes with the RecordIO magic planted at the given offsets."""
    data = bytearray(random.Random(seed).randbytes(size))
    for at in magic_at:
        data[at:at + 4] = MAGIC
    return bytes(data)


def write_insightface(prefix):
    """Record 0: header [first identity key, end]; 1..first-1: images; then identity records."""
    per_identity = [3, 1, 4, 2]
    first = sum(per_identity) + 1
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [first, first + len(per_identity)], 0, 0), b''))
    key = 1
    for identity, count in enumerate(per_identity):
        for _ in range(count):
            # Key 2 holds the magic at image offsets 0, 12 and 16 (payload offsets 24, 36, 40:
            # 4-aligned, so MXNet writes it in four parts) and at 5 (not aligned: no split).
            magic_at = (0, 5, 12, 16) if key == 2 else ()
            label = [float(identity), 0.5 * key, -1.0] if key == 5 else float(identity)
            rec.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), image_bytes(key, 64 + 16 * key, magic_at)))
            key += 1
    start = 1
    for identity, count in enumerate(per_identity):
        rec.write_idx(first + identity, mx.recordio.pack(mx.recordio.IRHeader(0, [start, start + count], 0, 0), b''))
        start += count
    rec.close()


def write_plain(prefix):
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')
    for key in range(6):
        magic_at = (0, 4, 60) if key == 3 else ()
        label = [7.0, 2.5] if key == 1 else float(key % 3)
        rec.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, 1000 + key, 5), image_bytes(100 + key, 64 + key, magic_at)))
    rec.close()


def as_dict(key, record):
    header, image = mx.recordio.unpack(record)
    label = header.label.tolist() if header.flag > 0 else float(header.label)
    return {'key': key, 'flag': header.flag, 'label': label, 'id': header.id, 'id2': header.id2, 'image': image.hex()}


def read_indexed(prefix):
    rec = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'r')
    return [as_dict(key, rec.read_idx(key)) for key in rec.keys]


def read_sequential(path):
    rec = mx.recordio.MXRecordIO(path, 'r')
    records = []
    while True:
        record = rec.read()
        if record is None:
            return records
        records.append(as_dict(len(records), record))


def read(prefixes):
    for prefix in prefixes:
        records = read_indexed(prefix)
        if records != read_sequential(prefix + '.rec'):
            sys.exit(prefix + ': reading through the idx and front to back differ')
        for record in records:
            print(json.dumps(dict(record, file=prefix)))


def write_large(path, mib):
    """Plain records of 8-24 KiB (a face JPEG's size) until the file reaches `mib` MiB."""
    rng = np.random.default_rng(1)
    pool = rng.integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes()
    rec = mx.recordio.MXIndexedRecordIO(path[:-len('.rec')] + '.idx', path, 'w')
    written, key = 0, 0
    while written < mib << 20:
        size = int(rng.integers(8 << 10, 24 << 10))
        start = int(rng.integers(0, len(pool) - size))
        record = mx.recordio.pack(mx.recordio.IRHeader(0, float(key % 1000), key, 0), pool[start:start + size])
        rec.write_idx(key, record)
        written += len(record) + 8
        key += 1
    rec.close()
    print(key)


def main(argv):
    if len(argv) >= 2 and argv[0] == 'write':
        write_insightface(argv[1] + '/train')
        write_plain(argv[1] + '/plain')
    elif len(argv) >= 2 and argv[0] == 'read':
        read(argv[1:])
    elif len(argv) >= 3 and argv[0] == 'large':
        write_large(argv[1], int(argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv[1:])
