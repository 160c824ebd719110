#!/usr/bin/env python3
"""NumPy/OpenCV/scikit-image/scikit-learn twin of insightface's eval_ijbc.py (IJB-B/IJB-C 1:1
verification), step for step, for checking `trainer eval --ijb` and `trainer bench ijb`.

  ijb_twin.py make DIR --faces FACES [--seed S]      a small IJB-style folder from `trainer synth`
  ijb_twin.py align DIR --out crops.npy [--target T]  eval_ijbc.py's reading + alignment (uint8 NHWC RGB)
  ijb_twin.py score DIR --features F.npy [--out S.npy] [--target T]
                                                     pooling, scoring, TAR table -> JSON on stdout
  ijb_twin.py table [DIR] --scores S.npy [--labels L.npy]
                                                     the TAR table of given scores -> JSON (labels
                                                     from L.npy, else from DIR's pair file)
  ijb_twin.py big DIR --features F.npy [--seed S]     meta files of IJB-C's size + random features

The embedding step (model(img) + model(flipped img)) runs in the PyTorch venv:
benches/ijb_twin_embed.py. Everything else here is eval_ijbc.py's code path (the file readers,
`image2template_feature`, `verification`, and the table read from sklearn's roc_curve).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

FARS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]


def meta_paths(d, target):
    p = target.lower()
    m = os.path.join(d, "meta")
    return (os.path.join(m, f"{p}_name_5pts_score.txt"), os.path.join(m, f"{p}_face_tid_mid.txt"),
            os.path.join(m, f"{p}_template_pair_label.txt"))


# ---- eval_ijbc.py's readers -------------------------------------------------------------

# eval_ijbc.py reads these two with pandas.read_csv; the reference venv has no pandas, so
# NumPy's (C) loadtxt reads the same integer columns.

def read_template_media_list(path):
    meta = np.loadtxt(path, dtype=np.int64, usecols=(1, 2), ndmin=2)
    return meta[:, 0].astype(int), meta[:, 1].astype(int)


def read_template_pair_list(path):
    pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
    return pairs[:, 0].astype(int), pairs[:, 1].astype(int), pairs[:, 2].astype(int)


def read_faceness(path):
    with open(path) as f:
        lines = f.readlines()
    return np.array([ln.strip().split(" ")[-1] for ln in lines]).astype(np.float32)


# ---- alignment (eval_ijbc.py's Embedding.get, without the model) ------------------------

def align(d, target, out):
    import cv2
    from skimage import transform as trans
    src = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    lm_path = meta_paths(d, target)[0]
    with open(lm_path) as f:
        lines = f.readlines()
    crops = np.zeros((len(lines), 112, 112, 3), dtype=np.uint8)
    for i, line in enumerate(lines):
        f = line.strip().split(" ")
        img = cv2.imread(os.path.join(d, "loose_crop", f[0]))
        lmk = np.array([float(x) for x in f[1:-1]], dtype=np.float32).reshape((5, 2))
        tform = trans.SimilarityTransform()
        tform.estimate(lmk, src)
        m = tform.params[0:2, :]
        img = cv2.warpAffine(img, m, (112, 112), borderValue=0.0)
        crops[i] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    np.save(out, crops)
    print(json.dumps({"crops": len(lines)}))


# ---- pooling and scoring (eval_ijbc.py's image2template_feature and verification) -------

def image2template_feature(img_feats, templates, medias):
    import sklearn.preprocessing
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count_template, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_norm_feats = img_feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, unique_media_counts = np.unique(face_medias, return_counts=True)
        media_norm_feats = []
        for u, ct in zip(unique_medias, unique_media_counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_norm_feats += [face_norm_feats[ind_m]]
            else:
                media_norm_feats += [np.mean(face_norm_feats[ind_m], axis=0, keepdims=True)]
        media_norm_feats = np.array(media_norm_feats)
        template_feats[count_template] = np.sum(media_norm_feats, axis=0)
    template_norm_feats = sklearn.preprocessing.normalize(template_feats)
    return template_norm_feats, unique_templates


def verification(template_norm_feats, unique_templates, p1, p2):
    template2id = np.zeros((max(unique_templates) + 1, 1), dtype=int)
    for count_template, uqt in enumerate(unique_templates):
        template2id[uqt] = count_template
    score = np.zeros((len(p1),))
    total_pairs = np.array(range(len(p1)))
    batchsize = 100000
    sublists = [total_pairs[i:i + batchsize] for i in range(0, len(p1), batchsize)]
    for s in sublists:
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        similarity_score = np.sum(feat1 * feat2, -1)
        score[s] = similarity_score.flatten()
    return score


def tar_table(label, score):
    from sklearn.metrics import auc, roc_curve
    fpr, tpr, _ = roc_curve(label, score)
    roc_auc = auc(fpr, tpr)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    row, picked = [], []
    for far in FARS:
        _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        row.append("%.2f" % (tpr[min_index] * 100))
        picked.append([float(fpr[min_index]), float(tpr[min_index])])
    return {"tar_pct": row, "far_tar": picked, "auc": float(roc_auc)}


def score(d, target, features, out):
    lm_path, media_path, pair_path = meta_paths(d, target)
    t0 = time.perf_counter()
    templates, medias = read_template_media_list(media_path)
    p1, p2, label = read_template_pair_list(pair_path)
    faceness = read_faceness(lm_path)
    img_feats = np.load(features)
    t1 = time.perf_counter()
    img_input_feats = img_feats * faceness[:, np.newaxis]
    template_norm_feats, unique_templates = image2template_feature(img_input_feats, templates, medias)
    t2 = time.perf_counter()
    scores = verification(template_norm_feats, unique_templates, p1, p2)
    t3 = time.perf_counter()
    result = tar_table(label, scores)
    t4 = time.perf_counter()
    if out:
        np.save(out, scores)
    result.update({"meta_s": t1 - t0, "pool_s": t2 - t1, "score_s": t3 - t2, "roc_s": t4 - t3,
                   "evaluate_s": t4 - t1, "total_s": t4 - t0, "pairs": len(scores)})
    print(json.dumps(result))


# ---- a small IJB-style folder ------------------------------------------------------------

def make(d, faces, seed):
    """Each synth face (its landmarks the ArcFace template scaled to the face) is placed into a
    larger noisy picture by a random similarity; the landmarks move with it."""
    import cv2
    rng = np.random.default_rng(seed)
    template = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]])
    ids = sorted(x for x in os.listdir(faces) if os.path.isdir(os.path.join(faces, x)))
    os.makedirs(os.path.join(d, "loose_crop"), exist_ok=True)
    os.makedirs(os.path.join(d, "meta"), exist_ok=True)
    lm_lines, media_lines, tmpl_of_id = [], [], {}
    tid, mid, n = 100, 5000, 0
    for k, ident in enumerate(ids):
        files = sorted(os.listdir(os.path.join(faces, ident)))
        # Two templates per identity, each of two or three medias, a media of one or two images.
        for t in range(2):
            tid += 1 + int(rng.integers(0, 3))
            tmpl_of_id.setdefault(k, []).append(tid)
            for _m in range(2 + int(rng.integers(0, 2))):
                mid += 1
                for _i in range(1 + int(rng.integers(0, 2))):
                    face = cv2.imread(os.path.join(faces, ident, files[int(rng.integers(0, len(files)))]))
                    name, lm = place(face, template * face.shape[1] / 112.0, rng, d, n)
                    score = rng.uniform(0.5, 1.0)
                    lm_lines.append(name + " " + " ".join("%.3f" % v for v in lm.flatten()) + " %.6f" % score)
                    media_lines.append(f"{name} {tid} {mid}")
                    n += 1
    pairs = []
    keys = sorted(tmpl_of_id)
    for a in keys:
        pairs.append((tmpl_of_id[a][0], tmpl_of_id[a][1], 1))
        for b in keys:
            if b > a:
                pairs.append((tmpl_of_id[a][int(rng.integers(0, 2))], tmpl_of_id[b][int(rng.integers(0, 2))], 0))
    rng.shuffle(pairs)
    lm_path, media_path, pair_path = meta_paths(d, "ijbc")
    for path, rows in ((lm_path, lm_lines), (media_path, media_lines),
                       (pair_path, ["%d %d %d" % p for p in pairs])):
        with open(path, "w") as f:
            f.write("\n".join(rows) + "\n")
    print(json.dumps({"images": n, "templates": sum(len(v) for v in tmpl_of_id.values()), "pairs": len(pairs)}))


def place(face, lm, rng, d, n):
    import cv2
    h, w = int(rng.integers(150, 260)), int(rng.integers(150, 260))
    angle = rng.uniform(-30, 30)
    scale = rng.uniform(0.8, 1.6) * 112.0 / face.shape[1]
    centre = np.array([w / 2 + rng.uniform(-15, 15), h / 2 + rng.uniform(-15, 15)])
    m = cv2.getRotationMatrix2D((face.shape[1] / 2, face.shape[0] / 2), angle, scale)
    m[:, 2] += centre - np.array([face.shape[1] / 2, face.shape[0] / 2])
    noise = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    placed = cv2.warpAffine(face, m, (w, h), borderMode=cv2.BORDER_TRANSPARENT, dst=noise)
    name = f"{n + 1}.jpg"
    cv2.imwrite(os.path.join(d, "loose_crop", name), placed, [cv2.IMWRITE_JPEG_QUALITY, 95])
    moved = lm @ m[:, :2].T + m[:, 2] + rng.normal(0, 0.7, size=lm.shape)
    return name, moved


# ---- meta files of IJB-C's size ----------------------------------------------------------

def big(d, features, seed):
    """469,375 images in 23,124 templates and 15,658,489 pairs (IJB-C's counts), random 512-d
    features; a tenth of the pairs genuine."""
    rng = np.random.default_rng(seed)
    n_img, n_tmpl, n_pair = 469375, 23124, 15658489
    os.makedirs(os.path.join(d, "meta"), exist_ok=True)
    tids = np.sort(rng.choice(np.arange(1, 200000), size=n_tmpl, replace=False))
    tmpl = np.concatenate([tids, tids[rng.integers(0, n_tmpl, size=n_img - n_tmpl)]])
    media = tmpl * 8 + rng.integers(0, 8, size=n_img)
    lm = rng.uniform(20, 200, size=(n_img, 10))
    score = rng.uniform(0.1, 1.0, size=n_img)
    lm_path, media_path, pair_path = meta_paths(d, "ijbc")
    names = np.char.add(np.arange(1, n_img + 1).astype(str), ".jpg")
    with open(lm_path, "w") as f:
        cols = [names] + [np.char.mod("%.3f", lm[:, j]) for j in range(10)] + [np.char.mod("%.6f", score)]
        f.write("\n".join(" ".join(r) for r in zip(*cols)) + "\n")
    with open(media_path, "w") as f:
        f.write("\n".join(f"{a} {b} {c}" for a, b, c in zip(names, tmpl, media)) + "\n")
    p1 = tids[rng.integers(0, n_tmpl, size=n_pair)]
    p2 = tids[rng.integers(0, n_tmpl, size=n_pair)]
    lab = (rng.random(n_pair) < 0.1).astype(np.int64)
    with open(pair_path, "w") as f:
        step = 1 << 20
        for i in range(0, n_pair, step):
            block = np.stack([p1[i:i + step], p2[i:i + step], lab[i:i + step]], axis=1)
            f.write("\n".join(" ".join(map(str, r)) for r in block.tolist()) + "\n")
    np.save(features, rng.standard_normal((n_img, 512), dtype=np.float32))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["make", "align", "score", "table", "big"])
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--target", default="IJBC")
    ap.add_argument("--faces")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--features")
    ap.add_argument("--scores")
    ap.add_argument("--labels")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.command == "make":
        make(a.dir, a.faces, a.seed)
    elif a.command == "align":
        align(a.dir, a.target, a.out)
    elif a.command == "score":
        score(a.dir, a.target, a.features, a.out)
    elif a.command == "table":
        labels = np.load(a.labels) if a.labels else read_template_pair_list(meta_paths(a.dir, a.target)[2])[2]
        print(json.dumps(tar_table(labels, np.load(a.scores))))
    else:
        big(a.dir, a.features, a.seed)


if __name__ == "__main__":
    sys.exit(main())
