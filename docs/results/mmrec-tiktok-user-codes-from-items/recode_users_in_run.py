"""Train an MMRec model compressed (plugin defaults) and, before each epoch in ``--epochs-before``, recode its users
by per-split k-means of the mean of their training items' decoded rows at that point, the user sub-embeddings
restarted at the k-means centroids (a diagnosis, sixteenth round; see README.md). ``--items`` also recodes the
items by the mean of their users' rows (not run).

    OMP_NUM_THREADS=1 <MMRec venv python> recode_users_in_run.py --model MGCN --mmrec-src <MMRec>/src \
        --data-path ../shared/datasets --seed 999 --epochs-before 8 --out <scratch>

Prints one JSON line: when it recoded, the share of sub-ids that changed (k-means labels are not aligned between
recodings, so this says little) and the bench's run record.
"""
import argparse, json
import numpy as np, scipy.sparse as sp, torch
from urecjpq_plugin.codes import kmeans_codes
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.hosts.mmrec import hook
from run_args import add_run_arguments, run


def find(model, n):
    return [m for m in model.modules() if isinstance(m, JPQEmbedding) and m.num_embeddings == n]


def main():
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    p.add_argument("--epochs-before", type=str, required=True, help="comma list of epochs to recode before")
    p.add_argument("--init", default="centroids", choices=["centroids", "keep"])
    p.add_argument("--items", action="store_true", help="also recode items by the mean of their users' rows")
    a = p.parse_args()
    when = {int(e) for e in a.epochs_before.split(",")}
    original = hook.compress_model
    log = []

    def compress_model(model, config, dataloader):
        summary = original(model, config, dataloader)
        X = dataloader.inter_matrix(form="csr").astype(np.float32)
        Xu = sp.diags(1 / np.maximum(np.asarray(X.sum(1)).ravel(), 1)) @ X
        Xi = sp.diags(1 / np.maximum(np.asarray(X.sum(0)).ravel(), 1)) @ X.T.tocsr()
        (U,), (I,) = find(model, X.shape[0]), find(model, X.shape[1])
        pre = model.pre_epoch_processing
        epoch = [0]

        def recode(table, target):
            with torch.no_grad():
                codes, cents = kmeans_codes(torch.from_numpy(np.asarray(target)).float(), table.M, table.ksub, seed=0)
                changed = float((codes != table.codes).float().mean())
                table.codes.copy_(codes.to(table.codes.dtype))
                if a.init == "centroids":
                    table.sub_embeddings.copy_(cents.to(table.sub_embeddings.dtype))
                table.invalidate_cache()
            return changed

        def pre_epoch():
            if epoch[0] in when:
                with torch.no_grad():
                    items = I._decode_all().cpu().numpy()
                    users = U._decode_all().cpu().numpy()
                entry = {"epoch": epoch[0], "user_changed": recode(U, Xu @ items)}
                if a.items:
                    entry["item_changed"] = recode(I, Xi @ users)
                log.append(entry)
                print("RECODE", entry, flush=True)
            epoch[0] += 1
            return pre()

        model.pre_epoch_processing = pre_epoch
        return summary

    hook.compress_model = compress_model
    torch.set_num_threads(1)
    record = run(a)
    print(json.dumps({"recode": a.epochs_before, "init": a.init, "items": a.items, "seed": a.seed, "log": log,
                      "set": a.set, **record}, default=str))


if __name__ == "__main__":
    main()
