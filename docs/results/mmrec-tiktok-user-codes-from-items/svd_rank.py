"""Train an MMRec model on TikTok compressed with the plugin defaults, but ``svd_pq_cos`` codes from an SVD of another
rank (``--rank``; the default is the table width, 64): ``rank / M`` components per split (a diagnosis, sixteenth
round; see README.md). Paths are this machine's: edit ``data_path`` and the MMRec checkout below.

    OMP_NUM_THREADS=1 <MMRec venv python> svd_rank.py --model FREEDOM --rank 256 --out <scratch>
"""
import argparse, json, os, functools
import torch
from urecjpq_plugin import assign
from urecjpq_plugin.hosts.mmrec import hook

p = argparse.ArgumentParser()
p.add_argument("--model", required=True); p.add_argument("--rank", type=int, required=True)
p.add_argument("--seed", type=int, default=999); p.add_argument("--out", required=True)
a = p.parse_args()
original = assign.svd_pq_codes
assign.svd_pq_codes = lambda inter, M, ksub, seed, rank, **kw: original(inter, M, ksub, seed, a.rank, **kw)
torch.set_num_threads(1)
record = hook.run_one(a.model, "tiktok", {"data_path": "/work/shared/datasets/", "jpq": True, "seed": a.seed}, a.out, "/work/mmrec/src")
print(json.dumps({"rank": a.rank, "seed": a.seed, **record}, default=str))
