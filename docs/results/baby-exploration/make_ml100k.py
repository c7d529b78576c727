"""ml-100k as an MMRec-format file with a seeded random 80/10/10 split (x_label 0/1/2): ml100k/ml100k.inter.

    python make_ml100k.py    # from RecBole's shipped ml-100k; the ml_* / ml2_* rows of results.jsonl use it
"""
import os

import numpy as np
import recbole

src = os.path.join(os.path.dirname(recbole.__file__), "dataset_example/ml-100k/ml-100k.inter")
a = np.loadtxt(src, skiprows=1, dtype=np.int64)
_, users = np.unique(a[:, 0], return_inverse=True)
_, items = np.unique(a[:, 1], return_inverse=True)
r = np.random.default_rng(0).random(len(a))
label = np.where(r < 0.8, 0, np.where(r < 0.9, 1, 2))
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ml100k")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "ml100k.inter"), "w") as fh:
    fh.write("userID\titemID\trating\ttimestamp\tx_label\n")
    for row in zip(users, items, a[:, 2], a[:, 3], label):
        fh.write("\t".join(map(str, row)) + "\n")
