"""``urecjpq compress --host mmrec``: a trained, uncompressed MMRec checkpoint into a JPQ one (no training).

    urecjpq compress --host mmrec saved/FREEDOM-tiktok-base.pth --out FREEDOM-tiktok-ptq.pth --mmrec-src MMRec/src

The checkpoint is one ``urecjpq-mmrec`` or the bench wrote (state dict + config). The model is built compressed
as MMRec's hook builds it (placeholder codes, no SVD); each compressed ID table then gets the product
quantisation of its trained rows (:func:`urecjpq_plugin.compress.quantize_table`: per split, k-means codes and
centroids as sub-embeddings), every other weight the checkpoint's. The rows are decoded plain (no degree scale,
no unit rows), so the compressed table approximates the trained one directly. The output reloads with
``urecjpq-mmrec --eval-checkpoint``; both models are evaluated on MMRec's test split.
"""

from __future__ import annotations

import os
from logging import getLogger
from typing import Any, Sequence

import torch

from urecjpq_plugin.apply import building_for_load
from urecjpq_plugin.compress import CompressError, check_not_jpq, check_out_free, quantize_table
from urecjpq_plugin.config import JPQConfig
from urecjpq_plugin.inject import jpq_module_at, swapped_tables
from urecjpq_plugin.pq import decode_rows, relative_error
from urecjpq_plugin.trained_codes import checkpoint_row_sources


def compress_checkpoint(checkpoint_path: str, out: str, mmrec_src: str | None, M: int | str = JPQConfig.M,
                        ksub: int = JPQConfig.ksub, targets: Sequence[str] = ("user", "item"), seed: int | None = None,
                        kmeans_iters: int = 25, data_path: str | None = None) -> dict:
    """Write ``out``; return ``{"out", "tables" (one line each), "trained", "compressed"}`` (test metrics).
    ``mmrec_src``: MMRec's ``src/`` (``None``: $MMREC_SRC or the working directory); checked after the inputs."""
    from urecjpq_plugin.checkpoint_file import read_checkpoint_file
    from urecjpq_plugin.hosts.mmrec import hook
    from urecjpq_plugin.hosts.mmrec.cli import find_mmrec_src
    from urecjpq_plugin.hosts.mmrec.runner import checkpoint_tag, saved_config, use_mmrec_src

    check_out_free(out)
    if kmeans_iters < 1:
        raise CompressError(f"--kmeans-iters={kmeans_iters} is invalid; it must be 1 or more")
    jcfg = JPQConfig(M=M, ksub=ksub, targets=tuple(targets))
    if jcfg.feature_targets:
        raise CompressError(f"--targets {list(jcfg.feature_targets)} are not ID tables; valid: user, item")
    checkpoint_path, out = os.path.abspath(checkpoint_path), os.path.abspath(out)
    checkpoint = read_checkpoint_file(checkpoint_path, needs=("state_dict", "config"), weights_only=True,
                                      written_by="urecjpq-mmrec")
    check_not_jpq(checkpoint, checkpoint_path)
    trained = checkpoint["state_dict"]
    overrides = {"data_path": os.path.abspath(data_path) + os.sep} if data_path else {}
    use_mmrec_src(find_mmrec_src(mmrec_src))
    hook.activate()
    from utils.configurator import Config
    from utils.utils import get_model

    saved = {**dict(checkpoint["config"]), **overrides}
    saved.pop("device", None)
    seed = saved.get("seed", 0) if seed is None else seed
    # Plain decoded rows: the quantised table approximates the trained one (no degree scale, no unit rows).
    saved.update(jpq=True, jpq_M=M, jpq_ksub=ksub, jpq_targets=list(jcfg.targets), jpq_degree_scale=0,
                 jpq_unit_rows=False)
    config = Config(saved["model"], saved["dataset"], saved)
    train_data = hook.load_data(config)[0]
    with building_for_load():  # placeholder codes, filled below
        model = get_model(config["model"])(config, train_data)
    counts = {"user": train_data.dataset.get_user_num(), "item": train_data.dataset.get_item_num()}
    swapped = swapped_tables(model)
    joint = [path for path, table in swapped.items() if table.ref.entity == "user_item"]
    if joint:
        raise CompressError(f"{config['model']} keeps users and items in one table ({', '.join(joint)}); compress "
                            "quantises one table per entity: train it with --jpq instead")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in trained and not k.endswith((".codes", ".sub_embeddings")))
    if missing:
        raise CompressError(f"checkpoint {checkpoint_path!r} lacks {', '.join(missing[:3])} of {config['model']}; "
                            "give a checkpoint of this model written by urecjpq-mmrec")
    model.load_state_dict({k: trained.get(k, v) for k, v in own.items()})
    lines = []
    for path, table in swapped.items():
        ((key, _, _, _),) = checkpoint_row_sources([table.ref], counts)[table.ref.entity]
        rows = trained[key].float()
        module = jpq_module_at(model, table.ref)
        codes, centroids = quantize_table(rows, module.M, module.ksub, seed, module.padding_idx, kmeans_iters)
        with torch.no_grad():
            module.codes.copy_(codes.to(module.codes.dtype))
            module.sub_embeddings.copy_(centroids)
        lines.append(f"{path} [{rows.shape[0]}x{rows.shape[1]}] -> M={module.M} ksub={module.ksub}: relative "
                     f"reconstruction error {relative_error(rows, decode_rows(centroids, codes)):.3f}")
    payload = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "config": saved_config(config),
               "urecjpq": {"tag": checkpoint_tag(config), "compressed_from": checkpoint_path}}
    if "caches" in checkpoint:  # forward caches full_sort_predict reads (feature graphs), not ID rows
        payload["caches"] = checkpoint["caches"]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save(payload, out)
    for line in lines:
        getLogger().info(f"urecjpq compress: {line}")
    return {"out": out, "tables": lines, "trained": hook.evaluate_checkpoint(checkpoint_path, overrides)["test_result"],
            "compressed": hook.evaluate_checkpoint(out, overrides)["test_result"]}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Test recall@20 / NDCG@20 of the trained and the compressed checkpoint, and the change."""
    lines = []
    for metric in ("recall@20", "ndcg@20"):
        before, after = result["trained"].get(metric), result["compressed"].get(metric)
        if before is not None and after is not None:
            change = f" ({(after - before) / before:+.1%})" if before else ""
            lines.append(f"test {metric}: trained {before:.4f}, compressed {after:.4f}{change}")
    return lines
