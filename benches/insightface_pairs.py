#!/usr/bin/env python3
"""Verification pair files (lfw.bin style) as Python 2 and Python 3 write them, as the
reference for the Rust reader (src/pairs.rs).

  insightface_pairs.py write DIR [PAIRS]   DIR/<style>.bin for every style below, and the
                                           content as JSON on stdout:
                                           {"images": [hex...], "issame": [...], "files": [...]}
  insightface_pairs.py read FILE           pickle.load(f, encoding='bytes') as that JSON
  insightface_pairs.py write-py2 DIR       DIR/{pickle,cPickle}_p{1,2}.bin as Python 2's
                                           pickle and cPickle wrote insightface's files, and
                                           {"images", "issame", "opcodes": {file: [names]}}

Styles: py2_p2 (Python 2's protocol 2, images as `str`: SHORT_BINSTRING / BINSTRING),
py3_p2 .. py3_p5 (`bytes`, pickle.dump), and, when numpy imports, numpy_p2/p3/p5 (issame
as a numpy bool array) and numpy_scalars (a list of numpy.bool_).

Debian has no Python 2, so its files are re-created here: Python 3's pure-Python pickler
is Python 2's `pickle.py` for lists, bools, tuples and the memo, and the subclasses below
give `bytes` the opcodes Python 2 gave `str` (BINSTRING / SHORT_BINSTRING, never
`_codecs.encode`); `write-py2` reports each file's opcodes so the test can check that.
"""
import io
import json
import pickle
import pickletools
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


class Py2Pickler(pickle._Pickler):
    """Python 2.7's `pickle` module: Python 3's pure-Python pickler (the same code for lists
    in batches of 1000, bools, tuples and the memo) with `bytes` saved as Python 2 saved
    `str`: SHORT_BINSTRING below 256 bytes, else BINSTRING, memoized."""
    dispatch = pickle._Pickler.dispatch.copy()
    # Whether a `str` of 0 or 1 bytes goes into the memo.
    memoize_short = True

    def save_str(self, data):
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<i', n) + data)
        if n >= 2 or self.memoize_short:
            self.memoize(data)

    dispatch[bytes] = save_str


class CPickler(Py2Pickler):
    """Python 2.7's `cPickle`: the same opcodes, but a `str` under 2 bytes is written again
    at each occurrence, never memoized (cPickle.c's `save` special-cases it)."""
    memoize_short = False


def py2_dumps(pickler, obj, protocol):
    out = io.BytesIO()
    pickler(out, protocol).dump(obj)
    return out.getvalue()


def py2_content():
    """What Python 2 made of `''.join(chr(...))` images: a linear congruential byte stream,
    images of (37 i mod 700) bytes, one image object repeated, and '' and 1-byte strings
    shared as Python 2 interns them (so `pickle` refers back to them through its memo)."""
    seed = [12345]

    def byte():
        seed[0] = (seed[0] * 1103515245 + 12345) % 2147483648
        return seed[0] >> 23

    interned = {}
    images = []
    for i in range(2600):
        data = bytes(byte() for _ in range((i * 37) % 700))
        images.append(interned.setdefault(data, data) if len(data) < 2 else data)
    images[7] = images[3]
    issame = [byte() % 2 == 0 for _ in range(1300)]
    return images, issame


def write_py2(directory):
    """`pickle.dump` and `cPickle.dump` of Python 2 at protocols 1 and 2, with each file's
    opcodes (pickletools) so the caller can check they are Python 2's."""
    images, issame = py2_content()
    opcodes = {}
    for name, pickler in (('pickle', Py2Pickler), ('cPickle', CPickler)):
        for protocol in (1, 2):
            data = py2_dumps(pickler, (images, issame), protocol)
            if pickle.loads(data, encoding='bytes') != (images, issame):
                sys.exit('%s protocol %d does not load back' % (name, protocol))
            file = '%s_p%d' % (name, protocol)
            opcodes[file] = sorted({op.name for op, _, _ in pickletools.genops(data)})
            with open('%s/%s.bin' % (directory, file), 'wb') as f:
                f.write(data)
    print(json.dumps({'images': [i.hex() for i in images], 'issame': issame, 'opcodes': opcodes}))


def write(directory, pairs):
    images, issame = content(pairs)
    files = {'py2_p2': py2_dumps(Py2Pickler, (images, issame), 2)}
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
    elif len(argv) == 2 and argv[0] == 'write-py2':
        write_py2(argv[1])
    elif len(argv) == 2 and argv[0] == 'read':
        read(argv[1])
    else:
        sys.exit(__doc__)


if __name__ == '__main__':
    main(sys.argv[1:])
