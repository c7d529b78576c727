"""``urecjpq compress``: turn a trained, uncompressed RecBole checkpoint into a JPQ one.

    urecjpq compress saved/BPR-Jan-01-2025_00-00-00.pth --out bpr-jpq.pth --M 8 --ksub 256
    urecjpq compress CHECKPOINT --out OUT --finetune-epochs 10

Every ID table the plugin would compress in that model (same rule as ``jpq: true`` at build time,
``--targets`` user,item by default) is replaced by its product quantisation: per split, k-means of the
trained sub-vectors gives the codes and the sub-embeddings (``codes.kmeans_codes``). All other weights
are copied. With ``--finetune-epochs N`` RecBole's own trainer continues from the compressed start on the
same data split (the best validation epoch is kept, as in RecBole). The output is a RecBole checkpoint
whose config says ``jpq: True``; ``recbole.quick_start.load_data_and_model`` loads it once the plugin is
active (its builder makes placeholder codes, which ``load_state_dict`` then overwrites).
"""

from __future__ import annotations

import argparse
import os
from logging import getLogger
from typing import Any, Sequence

import torch

from .codes import code_dtype, kmeans_codes
from .config import JPQConfig, URecJPQError, parse_list
from .jpq import JPQEmbedding


class CompressError(URecJPQError):
    """The checkpoint cannot be compressed as asked (missing, already JPQ, output exists ...)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="urecjpq compress", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="RecBole checkpoint (.pth) of a model trained without jpq")
    p.add_argument("--out", required=True, help="where to write the JPQ checkpoint (must not exist)")
    p.add_argument("--M", type=int, default=JPQConfig.M, help="splits per code (default %(default)s)")
    p.add_argument("--ksub", type=int, default=JPQConfig.ksub, help="sub-ids per split (default %(default)s)")
    p.add_argument("--targets", default="user,item", help="tables to compress: user, item or both (default %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="RecBole training epochs after compression")
    p.add_argument("--kmeans-iters", type=int, default=25, help="k-means iterations per split")
    p.add_argument("--seed", type=int, default=None, help="k-means seed (default: the checkpoint's seed)")
    return p.parse_args(argv)


def _recbole_host():
    from .hosts import recbole as host

    return host


def read_checkpoint(path: str) -> dict:
    """Load a RecBole checkpoint (pickled Config inside, hence ``weights_only=False``)."""
    if not os.path.isfile(path):
        raise CompressError(f"checkpoint {path!r} does not exist; give a .pth file written by a RecBole trainer")
    import recbole.config  # noqa: F401  (unpickling the Config needs RecBole importable)

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file gets the same one-line answer)
        raise CompressError(f"{path!r} is not a readable torch checkpoint ({type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"config", "state_dict"} <= set(checkpoint):
        raise CompressError(f"{path!r} is not a RecBole checkpoint (needs 'config' and 'state_dict' entries)")
    return checkpoint


def check_not_jpq(checkpoint: dict, path: str) -> None:
    from .config import jpq_enabled

    jpq_keys = [k for k in checkpoint["state_dict"] if k.endswith(".sub_embeddings")]
    if jpq_keys or jpq_enabled(checkpoint["config"]):
        raise CompressError(
            f"checkpoint {path!r} is already JPQ-compressed ({', '.join(jpq_keys[:2]) or 'jpq: True'}); "
            "give one trained without jpq"
        )


def quantize_split(x: torch.Tensor, ksub: int, seed: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: ``x [n, dsub]`` -> sub-ids ``[n]`` and ``ksub`` centroids.

    When the split holds at most ``ksub`` distinct sub-vectors (a table that is already a product of
    codes and centroids, or a tiny catalogue), they are the centroids and the result is exact;
    otherwise k-means.
    """
    distinct, inverse = torch.unique(x, dim=0, return_inverse=True)
    if distinct.shape[0] <= ksub:
        centroids = torch.cat([distinct, distinct[:1].expand(ksub - distinct.shape[0], -1)])  # extras unused
        return inverse, centroids
    codes, centroids = kmeans_codes(x, 1, ksub, seed, iters=iters)
    return codes[:, 0].long(), centroids[0]


def quantize_table(
    table: torch.Tensor, M: int, ksub: int, seed: int, padding_idx: int | None = None, iters: int = 25
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product-quantise a trained ``[N, d]`` table -> ``(codes [N, M], centroids [M, ksub, d/M])``.

    The padding row (all zeros, never trained) is left out and gets sub-ids 0; its decoded row is
    zero anyway in :class:`JPQEmbedding`.
    """
    table = table.detach().float().cpu()
    n, d = table.shape
    JPQConfig(M=M, ksub=ksub).check_dim(d)
    keep = torch.ones(n, dtype=torch.bool)
    if padding_idx is not None:
        keep[padding_idx] = False
    rows = table[keep]
    dsub = d // M
    codes = torch.zeros(n, M, dtype=torch.long)
    centroids = torch.empty(M, ksub, dsub)
    for k in range(M):
        sub_ids, centroids[k] = quantize_split(rows[:, k * dsub : (k + 1) * dsub], ksub, seed + k, iters)
        codes[keep, k] = sub_ids
    return codes.to(code_dtype(ksub)), centroids


def _source_key(module_name: str, state_dict: dict) -> str:
    """Key of the uncompressed table a JPQ module replaced (``nn.Embedding`` or raw Parameter)."""
    for key in (f"{module_name}.weight", module_name[:-4] if module_name.endswith("_jpq") else None):
        if key and key in state_dict:
            return key
    raise CompressError(f"no uncompressed table for {module_name!r} in the checkpoint; tables there: "
                        f"{[k for k, v in state_dict.items() if getattr(v, 'ndim', 0) == 2]}")


def compressed_state_dict(model: torch.nn.Module, state_dict: dict, seed: int, iters: int) -> tuple[dict, list[str]]:
    """``state_dict`` with every table ``model`` holds as JPQ replaced by its k-means codes + centroids."""
    from .inject import jpq_modules

    new_state = dict(state_dict)
    lines = []
    for name, module in jpq_modules(model).items():
        key = _source_key(name, state_dict)
        table = new_state.pop(key)
        codes, centroids = quantize_table(table, module.M, module.ksub, seed, module.padding_idx, iters)
        new_state[f"{name}.codes"] = codes
        new_state[f"{name}.sub_embeddings"] = centroids.to(table.dtype)
        decoded = JPQEmbedding.from_centroids(codes, centroids, module.padding_idx).weight.detach()
        err = (decoded - table.float()).norm() / table.float().norm().clamp_min(1e-12)
        lines.append(
            f"{key} [{table.shape[0]}x{table.shape[1]}] -> {name} M={module.M} ksub={module.ksub}: "
            f"relative reconstruction error {err:.3f}, bytes {table.numel() * table.element_size():,} -> "
            f"{codes.numel() * codes.element_size() + centroids.numel() * table.element_size():,}"
        )
    return new_state, lines


def _save(path: str, config: Any, model: torch.nn.Module, epoch: int) -> None:
    """Same layout as RecBole's ``Trainer._save_checkpoint`` (without optimizer state)."""
    state = {
        "config": config,
        "epoch": epoch,
        "cur_step": 0,
        "best_valid_score": None,
        "state_dict": model.state_dict(),
        "other_parameter": model.other_parameter(),
    }
    torch.save(state, path, pickle_protocol=4)


def compress_checkpoint(
    checkpoint_path: str,
    out: str,
    M: int = JPQConfig.M,
    ksub: int = JPQConfig.ksub,
    targets: Sequence[str] = ("user", "item"),
    finetune_epochs: int = 0,
    seed: int | None = None,
    kmeans_iters: int = 25,
) -> dict:
    """Write ``out``; return ``{"out", "tables" (one line each), "finetune_epochs"}``. Checks run first."""
    if os.path.exists(out):
        raise CompressError(f"--out {out!r} already exists; choose a new path (nothing is overwritten)")
    if finetune_epochs < 0:
        raise CompressError(f"--finetune-epochs={finetune_epochs} is invalid; it must be 0 or more")
    if kmeans_iters < 1:
        raise CompressError(f"--kmeans-iters={kmeans_iters} is invalid; it must be 1 or more")
    checkpoint = read_checkpoint(checkpoint_path)
    check_not_jpq(checkpoint, checkpoint_path)
    config = checkpoint["config"]
    # Placeholder codes at build ("random", cheap); load_state_dict overwrites them with the k-means codes.
    jcfg = JPQConfig(M=M, ksub=ksub, code_assign="random", targets=tuple(targets))
    if jcfg.feature_targets:
        raise CompressError(f"--targets {list(jcfg.feature_targets)} are not ID tables; valid: user, item")
    for key, value in (("jpq", True), ("jpq_M", M), ("jpq_ksub", ksub), ("jpq_code_assign", "random"),
                       ("jpq_targets", list(jcfg.targets))):
        config[key] = value
    seed = config["seed"] if seed is None else seed

    host = _recbole_host()
    host.activate()
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import init_logger, init_seed

    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = quick_start.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    state, lines = compressed_state_dict(model, checkpoint["state_dict"], seed, kmeans_iters)
    model.load_state_dict(state)  # strict: every key of the compressed model must be there
    model.load_other_parameter(checkpoint.get("other_parameter"))
    logger = getLogger()
    for line in lines:
        logger.info(f"urecjpq compress: {line}")
    out_dir = os.path.dirname(os.path.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    if finetune_epochs == 0:
        _save(out, config, model, checkpoint.get("epoch", -1))
    else:
        _finetune(config, model, train_data, valid_data, finetune_epochs, out)
    return {"out": out, "tables": lines, "finetune_epochs": finetune_epochs}


def _finetune(config: Any, model: torch.nn.Module, train_data: Any, valid_data: Any, epochs: int, out: str) -> None:
    """RecBole's trainer from the compressed start; it writes its best-validation checkpoint to ``out``."""
    from recbole.utils import get_trainer, init_seed

    config["epochs"] = epochs
    config["checkpoint_dir"] = os.path.dirname(os.path.abspath(out))
    init_seed(config["seed"], config["reproducibility"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.saved_model_file = out
    trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])
    if not os.path.exists(out):  # no validation ran within the epochs (eval_step > epochs)
        _save(out, config, model, epochs - 1)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    result = compress_checkpoint(
        args.checkpoint,
        args.out,
        M=args.M,
        ksub=args.ksub,
        targets=parse_list(args.targets),
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        kmeans_iters=args.kmeans_iters,
    )
    for line in result["tables"]:
        print(line)
    print(f"wrote {result['out']} ({os.path.getsize(result['out']):,} bytes)")
    return 0
