"""Train an MMRec model compressed with user codes from k-means of the mean of each user's training items' rows
(a diagnosis, sixteenth round; see README.md).

The trained uncompressed MGCN's / FREEDOM's user rows are close to the mean of their items' trained rows
(``../mmrec-tiktok-oracle-codes/trained_rows_fit.jsonl``). Item rows come from ``--source``: an uncompressed
checkpoint (``<item-key>.weight``), a compressed one (its codes and sub-embeddings, decoded with the degree scale),
a plain LightGCN fit (``../mmrec-tiktok-oracle-codes/lightgcn_fit.py``), or ``features`` (the dataset's image and
text features, L2-normalised per modality). Per-split k-means (``kmeans_codes``, 16 x 256, seed 0) of the users'
means gives the user codes; items keep the plugin's ``svd_pq_cos`` codes, or with ``--item-codes source`` the
source's. Then the model trains from scratch with ``--jpq`` and every other plugin default.

    OMP_NUM_THREADS=1 <MMRec venv python> user_codes_from_items.py --source <bench folder>/runs/MGCN-base-s999/MGCN-tiktok-base.pth \
        --item-key item_id_embedding --model MGCN --mmrec-src <MMRec>/src --data-path ../shared/datasets --seed 999 --out <scratch>

Prints one JSON line: the source and the bench's run record.
"""
import argparse, json, os
import numpy as np, scipy.sparse as sp, torch
from urecjpq_plugin.checkpoint_file import read_checkpoint_file
from urecjpq_plugin.codes import kmeans_codes
from urecjpq_plugin.pq import decode_rows
from urecjpq_plugin.hosts.mmrec import hook
from run_args import add_run_arguments, run


def item_rows(state, key):
    if key + ".weight" in state:
        return state[key + ".weight"].float(), None
    codes = state[key + ".codes"].long()
    rows = decode_rows(state[key + ".sub_embeddings"].float(), codes)
    if state.get(key + ".row_scale") is not None:
        rows = rows * (state[key + ".row_scale"].float() / 255).unsqueeze(1)
    return rows, codes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    p.add_argument("--item-key", default="")
    add_run_arguments(p)
    p.add_argument("--normalise", action="store_true", help="k-means of the means' directions")
    p.add_argument("--item-codes", default="svd", choices=["svd", "source"])
    a = p.parse_args()
    if a.source == "features":
        from urecjpq_plugin.features import normalised_concat
        feats = [np.load(os.path.join(a.data_path, a.dataset, f)) for f in ("image_feat.npy", "text_feat.npy")]
        rows, src_codes = torch.from_numpy(np.asarray(normalised_concat(feats), dtype=np.float32)), None
    else:
        state = read_checkpoint_file(os.path.abspath(a.source), needs=("state_dict",), weights_only=True)["state_dict"]
        rows, src_codes = item_rows(state, a.item_key)
    inter = np.genfromtxt(os.path.join(a.data_path, a.dataset, f"{a.dataset}.inter"), delimiter="\t", skip_header=1, dtype=np.int64)
    train = inter[inter[:, 4] == 0]
    n_users = int(inter[:, 0].max()) + 1
    X = sp.csr_matrix((np.ones(len(train), np.float32), (train[:, 0], train[:, 1])), shape=(n_users, rows.shape[0]))
    deg = np.asarray(X.sum(1)).ravel()
    means = torch.from_numpy(sp.diags(1 / np.maximum(deg, 1)) @ X @ rows.numpy()).float()
    if a.normalise:
        means = torch.nn.functional.normalize(means, dim=1)
    user_codes = kmeans_codes(means, 16, 256, seed=0)[0]
    fixed = {"user": user_codes}
    if a.item_codes == "source":
        fixed["item"] = src_codes if src_codes is not None else kmeans_codes(rows, 16, 256, seed=0)[0]
    computed = hook.compute_codes
    hook.compute_codes = lambda *x, **kw: {**computed(*x, **kw), **fixed}
    torch.set_num_threads(1)
    record = run(a, jpq_code_assign="svd_pq_cos")
    print(json.dumps({"source": a.source, "normalise": a.normalise, "item_codes": a.item_codes, "seed": a.seed,
                      "set": a.set, **record}, default=str))


if __name__ == "__main__":
    main()
