"""``urecjpq compress``: turn a trained, uncompressed RecBole checkpoint into a JPQ one.

    urecjpq compress saved/BPR-Jan-01-2025_00-00-00.pth --out bpr-jpq.pth [--M auto] [--ksub 256]
    urecjpq compress CHECKPOINT --out OUT --finetune-epochs 10
    urecjpq compress --host mmrec saved/FREEDOM-tiktok-base.pth --out freedom-ptq.pth --mmrec-src MMRec/src

(MMRec checkpoints: :mod:`urecjpq_plugin.hosts.mmrec.compress`.)

The model is rebuilt as it was trained (uncompressed) and its weights loaded; then every ID table the
plugin would compress (same rule as ``jpq: true`` at build time, ``--targets`` user,item by default)
is replaced by its product quantisation (:func:`urecjpq_plugin.compress.quantize_model`: per split,
k-means of the trained sub-vectors gives the codes and the sub-embeddings). All other weights stay.
With ``--finetune-epochs N`` RecBole's own trainer continues from the compressed start on the same
data split; the compressed start is validated first and counts as epoch -1, so an epoch is kept only
if it validates better than the start (fine-tuning never returns a model worse on validation). The
output is a RecBole checkpoint whose config says ``jpq: True``; ``load_data_and_model`` loads it once
the plugin is active.
"""

from __future__ import annotations

import argparse
import math
import os
from logging import getLogger
from typing import Any, Sequence

import torch

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.compress import CompressError, check_not_jpq, check_out_free, quantize_model
from urecjpq_plugin.config import JPQConfig, parse_list


def _M(text: str) -> int | str:
    from urecjpq_plugin.config import AUTO

    if text.strip().lower() == AUTO:
        return AUTO
    try:
        return int(text)
    except ValueError:
        raise CompressError(f"--M {text!r} is invalid; give a positive integer or auto") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="urecjpq compress", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="RecBole checkpoint (.pth) of a model trained without jpq")
    p.add_argument("--out", required=True, help="where to write the JPQ checkpoint (must not exist)")
    p.add_argument("--M", type=_M, default=JPQConfig.M,
                   help="splits per code: auto (the plugin's default, embedding size / 4) or an integer")
    p.add_argument("--ksub", type=int, default=JPQConfig.ksub, help="sub-ids per split (default %(default)s)")
    p.add_argument("--targets", default="user,item", help="tables to compress: user, item or both (default %(default)s)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="RecBole training epochs after compression")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="learning rate of --finetune-epochs (default: the checkpoint's learning_rate)")
    p.add_argument("--kmeans-iters", type=int, default=25, help="k-means iterations per split")
    p.add_argument("--seed", type=int, default=None, help="k-means seed (default: the checkpoint's seed)")
    p.add_argument("--host", choices=("recbole", "mmrec"), default="recbole",
                   help="who wrote the checkpoint (default %(default)s); mmrec: see urecjpq_plugin.hosts.mmrec.compress")
    p.add_argument("--mmrec-src", default=None, help="MMRec's src/ (--host mmrec; default $MMREC_SRC or here)")
    p.add_argument("--data-path", default=None, help="--host mmrec: the dataset folder, if not the checkpoint's")
    return p.parse_args(argv)


def read_checkpoint(path: str) -> dict:
    """Load a RecBole checkpoint (pickled Config inside, hence ``weights_only=False``)."""
    from urecjpq_plugin.checkpoint_file import read_checkpoint_file

    if os.path.isfile(path):
        import recbole.config  # noqa: F401  (unpickling the Config needs RecBole importable)
    return read_checkpoint_file(path, needs=("config", "state_dict"), written_by="a RecBole trainer")


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
    M: int | str = JPQConfig.M,
    ksub: int = JPQConfig.ksub,
    targets: Sequence[str] = ("user", "item"),
    finetune_epochs: int = 0,
    seed: int | None = None,
    kmeans_iters: int = 25,
    finetune_lr: float | None = None,
) -> dict:
    """Write ``out``; return ``{"out", "tables" (one line each), "finetune_epochs"}``. Checks run first."""
    check_out_free(out)
    if finetune_epochs < 0:
        raise CompressError(f"--finetune-epochs={finetune_epochs} is invalid; it must be 0 or more")
    if finetune_lr is not None and not (math.isfinite(finetune_lr) and finetune_lr > 0):
        raise CompressError(f"--finetune-lr={finetune_lr} is invalid; it must be a positive number")
    if kmeans_iters < 1:
        raise CompressError(f"--kmeans-iters={kmeans_iters} is invalid; it must be 1 or more")
    jcfg = JPQConfig(M=M, ksub=ksub, code_assign="random", targets=tuple(targets))
    if jcfg.feature_targets:
        raise CompressError(f"--targets {list(jcfg.feature_targets)} are not ID tables; valid: user, item")
    checkpoint = read_checkpoint(checkpoint_path)
    check_not_jpq(checkpoint, checkpoint_path)
    config = checkpoint["config"]
    seed = config["seed"] if seed is None else seed

    from urecjpq_plugin.hosts.recbole import hook as host
    from urecjpq_plugin.hosts.recbole.compat import set_numpy1_aliases

    host.activate()
    # RecBole sets numpy's old aliases (np.float, which its NDCG uses) when a Config is built; this
    # one was unpickled, so set them here or the first validation of --finetune-epochs fails.
    set_numpy1_aliases()
    from recbole.data import create_dataset, data_preparation
    from recbole.quick_start import quick_start
    from recbole.utils import init_logger, init_seed

    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    # The model as it was trained (uncompressed), with its weights; then its ID tables are quantised.
    model = quick_start.get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    counts = {"user": train_data._dataset.user_num, "item": train_data._dataset.item_num}
    report, lines = quantize_model(model, counts, M, ksub, jcfg.targets, seed=seed, iters=kmeans_iters)
    M = report.M  # auto resolved from the tables' width
    from urecjpq_plugin.hosts.recbole.topk import install_pq_full_sort

    install_pq_full_sort(model)  # as a model built with jpq: true
    # How the host rebuilds it: random placeholder codes at build, overwritten by load_state_dict.
    for key, value in (("jpq", True), ("jpq_M", M), ("jpq_ksub", ksub), ("jpq_code_assign", "random"),
                       ("jpq_targets", list(jcfg.targets))):
        config[key] = value
    logger = getLogger()
    for line in lines:
        logger.info(f"urecjpq compress: {line}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if finetune_epochs == 0:
        _save(out, config, model, checkpoint.get("epoch", -1))
    else:
        _finetune(config, model, train_data, valid_data, finetune_epochs, out, finetune_lr)
    return {"out": out, "tables": lines, "finetune_epochs": finetune_epochs}


def _finetune(config: Any, model: torch.nn.Module, train_data: Any, valid_data: Any, epochs: int, out: str,
              lr: float | None = None) -> None:
    """RecBole's trainer from the compressed start; it writes its best-validation checkpoint to ``out``."""
    from recbole.utils import get_trainer, init_seed

    config["epochs"] = epochs
    config["checkpoint_dir"] = os.path.dirname(os.path.abspath(out))
    if lr is not None:
        config["learning_rate"] = lr  # read by the trainer's optimizer
    init_seed(config["seed"], config["reproducibility"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.saved_model_file = out
    # The start is the first candidate: training from a well-quantised model can drift below it (shared
    # sub-embeddings moved at the host's learning rate), and RecBole keeps only epochs that beat the best.
    trainer.best_valid_score, trainer.best_valid_result = trainer._valid_epoch(valid_data, show_progress=False)
    getLogger().info(f"urecjpq compress: the compressed start validates at {trainer.best_valid_score:.4f}")
    trainer._save_checkpoint(-1, verbose=False)
    trainer.fit(train_data, valid_data, saved=True, show_progress=config["show_progress"])


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.host == "mmrec":
        return _main_mmrec(args)
    result = compress_checkpoint(
        args.checkpoint,
        args.out,
        M=args.M,
        ksub=args.ksub,
        targets=parse_list(args.targets),
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        kmeans_iters=args.kmeans_iters,
        finetune_lr=args.finetune_lr,
    )
    for line in result["tables"]:
        print(line)
    print(f"wrote {result['out']} ({os.path.getsize(result['out']):,} bytes)")
    return 0


def _main_mmrec(args: argparse.Namespace) -> int:
    """``--host mmrec``: no fine-tuning (MMRec's trainer is not driven from here); both models evaluated."""
    from urecjpq_plugin.hosts.mmrec import compress as mmrec_compress

    if args.finetune_epochs or args.finetune_lr is not None:
        raise CompressError("--finetune-epochs / --finetune-lr are RecBole-only; for MMRec train with --jpq "
                            "(e.g. --jpq_codes_from=<this checkpoint>)")
    result = mmrec_compress.compress_checkpoint(
        args.checkpoint, args.out, args.mmrec_src, M=args.M, ksub=args.ksub,
        targets=parse_list(args.targets), seed=args.seed, kmeans_iters=args.kmeans_iters, data_path=args.data_path)
    for line in result["tables"] + mmrec_compress.summary_lines(result):
        print(line)
    print(f"wrote {result['out']} ({os.path.getsize(result['out']):,} bytes)")
    return 0
