#!/usr/bin/env python3
"""Verification pair files (lfw.bin style) as Python 2 and Python 3 write them, as the
reference for the Rust reader (src/pairs.rs).

  insightface_pairs.py write DIR [PAIRS]   DIR/<style>.bin for every style below, and the
                                           content as JSON on stdout:
                                           {"images": [hex...], "issame": [...], "files": [...]}
  insightface_pairs.py read FILE           pickle.load(f, encoding='bytes') as that JSON

Styles: py2_p2 (Python 2's protocol 2, images as `str`: SHORT_BINSTRING / BINSTRING, built
byte by byte since Python 2 is not at hand), py3_p2 .. py3_p5 (`bytes`, pickle.dump), and,
when numpy imports, numpy_p2/p3/p5 (issame as a numpy bool array) and numpy_scalars
(a list of numpy.bool_).
"""
import json
import pickle
import random
import struct
import sys


def content(pairs):
    """Images of 0..699 bytes (both sides of SHORT_BINSTRING's 255), one image object
    repeated (the pickle memo then refers back to it), bools in a fixed random order."""
    rng = random.Random(5)
    images = [rng.randbytes(rng.randrange(0, 700)) for _ in range(2 * pairs)]
    images[7] = images[3]
    issame = [rng.random() < 0.5 for _ in range(pairs)]
    return images, issame


class Py2Pickler:
    """Protocol 2 as Python 2's pickle writes it for `(list of str, list of bool)`."""

    def __init__(self):
        self.out = bytearray(b'\x80\x02')
        self.memo = {}

    def put(self, obj):
        index = len(self.memo)
        self.memo[id(obj)] = index
        self.out += b'q' + bytes([index]) if index < 256 else b'r' + struct.pack('<I', index)

    def save_str(self, data):
        if id(data) in self.memo:
            index = self.memo[id(data)]
            self.out += b'h' + bytes([index]) if index < 256 else b'j' + struct.pack('<I', index)
            return
        if len(data) < 256:
            self.out += b'U' + bytes([len(data)]) + data
        else:
            self.out += b'T' + struct.pack('<i', len(data)) + data
        self.put(data)

    def save_bool(self, value):
        self.out += b'\x88' if value else b'\x89'

    def save_list(self, items, save_item):
        self.out += b']'
        self.put(items)
        for start in range(0, len(items), 1000):
            batch = items[start:start + 1000]
            if len(batch) > 1:
                self.out += b'('
            for item in batch:
                save_item(item)
            self.out += b'e' if len(batch) > 1 else b'a'

    def dumps(self, images, issame):
        self.save_list(images, self.save_str)
        self.save_list(issame, self.save_bool)
        self.out += b'\x86'
        self.put((images, issame))
        self.out += b'.'
        return bytes(self.out)


def write(directory, pairs):
    images, issame = content(pairs)
    files = {'py2_p2': Py2Pickler().dumps(images, issame)}
    for protocol in (2, 3, 4, 5):
        files['py3_p%d' % protocol] = pickle.dumps((images, issame), protocol=protocol)
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        for protocol in (2, 3, 5):
            files['numpy_p%d' % protocol] = pickle.dumps((images, np.array(issame, dtype=bool)), protocol=protocol)
        files['numpy_scalars'] = pickle.dumps((images, [np.bool_(v) for v in issame]), protocol=2)
    for name, data in files.items():
        with open('%s/%s.bin' % (directory, name), 'wb') as f:
            f.write(data)
    print(json.dumps({'images': [i.hex() for i in images], 'issame': issame, 'files': sorted(files)}))


def read(path):
    with open(path, 'rb') as f:
        images, issame = pickle.load(f, encoding='bytes')
    print(json.dumps({'images': [i.hex() for i in images], 'issame': [bool(v) for v in issame]}))


def main(argv):
    if len(argv) >= 2 and argv[0] == 'write':
        write(argv[1], int(argv[2]) if len(argv) > 2 else 1300)
    elif len(argv) == 2 and argv[0] == 'read':
        read(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv[1:])
