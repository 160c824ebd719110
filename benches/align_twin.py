#!/usr/bin/env python3
"""NumPy twin of the Rust `align` module: insightface's 5-point ArcFace alignment.

For each job it writes, next to the output prefix P:
  P.twin.npy   the crop from this file's own float64 bilinear warp (NumPy only)
  P.cv2.npy    the crop from cv2.warpAffine with the same matrix (when cv2 imports)
  P.json       {"twin": 2x3, "skimage": 2x3 or null, "cv2_version", "skimage_version"}
  P.*.png      the crops as PNG, with --png (needs cv2)

Images are H x W x 3 uint8 RGB .npy files, or any format cv2 reads.

  align_twin.py --image face.npy --landmarks x1,y1,...,x5,y5 --size 112 --out out/face
  align_twin.py --jobs jobs.json   # [{"image", "landmarks": [[x, y] x 5], "size", "out"}, ...]
  align_twin.py --check            # exit 1 unless cv2 and scikit-image both work here
"""
import argparse
import json
import sys
import warnings

import numpy as np

# Optional references; a broken install (say, a NumPy too old for SciPy) counts as missing.
IMPORT_ERRORS = {}
try:
    import cv2
except Exception as e:  # noqa: BLE001
    cv2, IMPORT_ERRORS["cv2"] = None, repr(e)
try:
    import skimage
    from skimage.transform import SimilarityTransform
except Exception as e:  # noqa: BLE001
    skimage, IMPORT_ERRORS["skimage"] = None, repr(e)

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


def template(size):
    return ARCFACE_112 * (size / 112.0)


def umeyama(src, dst):
    """Least-squares similarity src -> dst through the SVD of the cross-covariance; a reflection
    is traded for the best proper rotation by flipping the smallest singular direction."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    flip = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        flip[1] = -1.0
    rot = u @ np.diag(flip) @ vt
    scale = (sig * flip).sum() / (s**2).sum(1).mean()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = md - scale * rot @ ms
    return m


def skimage_matrix(src, dst):
    if skimage is None:
        return None
    if hasattr(SimilarityTransform, "from_estimate"):
        tf = SimilarityTransform.from_estimate(src, dst)
        return tf.params[:2].copy() if tf else None
    tf = SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = tf.estimate(src, dst)
    return tf.params[:2].copy() if ok else None


def warp(img, m, size):
    """Output pixel (x, y) = bilinear sample of img at m^-1 (x, y), 0 outside, rounded half to even."""
    full = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    x0, y0 = np.floor(sx), np.floor(sy)
    a, b = (sx - x0)[..., None], (sy - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)

    def at(x, y):
        h, w = img.shape[:2]
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        out = np.zeros(x.shape + (img.shape[2],))
        out[inside] = img[y[inside], x[inside]]
        return out

    top = at(x0, y0) * (1 - a) + at(x0 + 1, y0) * a
    bottom = at(x0, y0 + 1) * (1 - a) + at(x0 + 1, y0 + 1) * a
    return np.clip(np.rint(top * (1 - b) + bottom * b), 0, 255).astype(np.uint8)


def load(path):
    if path.endswith(".npy"):
        img = np.load(path)
    elif cv2 is not None:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"cannot read {path}")
        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    else:
        sys.exit(f"{path}: only .npy images can be read without cv2")
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        sys.exit(f"{path}: expected H x W x 3 uint8, got {img.shape} {img.dtype}")
    return img


def run_job(job, png):
    img = load(job["image"])
    lm = np.asarray(job["landmarks"], float).reshape(5, 2)
    size, out = int(job["size"]), job["out"]
    m = umeyama(lm, template(size))
    crops = {"twin": warp(img, m, size)}
    if cv2 is not None:
        crops["cv2"] = cv2.warpAffine(img, m, (size, size), borderValue=0.0)
    for name, crop in crops.items():
        np.save(f"{out}.{name}.npy", crop)
        if png:
            cv2.imwrite(f"{out}.{name}.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    sk = skimage_matrix(lm, template(size))
    meta = {
        "twin": m.tolist(),
        "skimage": None if sk is None else sk.tolist(),
        "cv2_version": None if cv2 is None else cv2.__version__,
        "skimage_version": None if skimage is None else skimage.__version__,
    }
    with open(f"{out}.json", "w") as f:
        json.dump(meta, f)


def check():
    if IMPORT_ERRORS:
        sys.exit("; ".join(f"{name}: {err}" for name, err in IMPORT_ERRORS.items()))
    m = skimage_matrix(ARCFACE_112 + 1.0, ARCFACE_112)
    if m is None or not np.allclose(m, umeyama(ARCFACE_112 + 1.0, ARCFACE_112)):
        sys.exit(f"skimage's SimilarityTransform disagrees with the twin: {m}")
    print(f"numpy {np.__version__}, cv2 {cv2.__version__}, skimage {skimage.__version__}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", help="JSON list of jobs")
    p.add_argument("--image")
    p.add_argument("--landmarks", help="x1,y1,...,x5,y5")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--out", help="output prefix")
    p.add_argument("--png", action="store_true", help="also write PNGs (needs cv2)")
    p.add_argument("--check", action="store_true", help="only check that cv2 and skimage work")
    args = p.parse_args()
    if args.check:
        check()
        return
    if args.png and cv2 is None:
        sys.exit("--png needs cv2")
    if args.jobs:
        with open(args.jobs) as f:
            jobs = json.load(f)
    elif args.image and args.landmarks and args.out:
        coords = [float(v) for v in args.landmarks.split(",")]
        jobs = [{"image": args.image, "landmarks": coords, "size": args.size, "out": args.out}]
    else:
        p.error("give --jobs, or --image, --landmarks and --out")
    for job in jobs:
        run_job(job, args.png)


if __name__ == "__main__":
    main()
