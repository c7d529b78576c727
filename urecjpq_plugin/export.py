"""Serve a JPQ table with faiss: its codes and sub-embeddings *are* a trained ``faiss.IndexPQ``.

    python -m urecjpq_plugin.export CHECKPOINT --table item_embedding --out items.faiss

``to_faiss_index(table)`` builds ``IndexPQ(d, M, log2(ksub), METRIC_INNER_PRODUCT)``, copies the
sub-embeddings in as the PQ centroids (same ``[M, ksub, dsub]`` layout) and adds the codes as they are
(no re-encoding), so faiss's inner-product search ranks exactly by the decoded rows. Row ``i`` of the
table is faiss id ``i``; a padding row is included with its code (its JPQ row decodes to zeros, faiss's
does not), so leave its id out of results (RecBole never recommends item 0 anyway).

faiss is an optional dependency: ``pip install urecjpq_plugin[faiss]`` (faiss-cpu).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Sequence

import numpy as np
import torch

from urecjpq_plugin.cli_parser import ArgumentParser
from urecjpq_plugin.config import URecJPQError
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.topk_kernels import faiss_or_none, pack_codes, pq_nbits  # pack_codes: the faiss code layout, public here too


class ExportError(URecJPQError):
    """The table cannot be exported as asked (faiss missing, ksub not a power of 2, no such table ...)."""


def _faiss() -> Any:
    faiss = faiss_or_none()
    if faiss is None:
        raise ExportError("faiss is not installed; pip install 'urecjpq_plugin[faiss]' (or faiss-cpu)")
    return faiss


def nbits_for(ksub: int) -> int:
    """faiss PQ stores ``nbits`` per sub-id, so ``ksub`` must be ``2**nbits`` (faiss allows up to 16)."""
    nbits = pq_nbits(ksub)
    if nbits is None:
        raise ExportError(f"ksub={ksub} cannot be a faiss PQ codebook; it must be a power of 2 in [2, 65536]")
    return nbits


def to_faiss_index(
    table: JPQEmbedding | None = None,
    *,
    codes: torch.Tensor | None = None,
    sub_embeddings: torch.Tensor | None = None,
) -> Any:
    """A filled, trained ``faiss.IndexPQ`` (inner product) holding ``table``'s rows as PQ codes."""
    faiss = _faiss()
    if table is not None:
        if table.row_scale is not None:
            raise ExportError("this table has a per-ID row scale (jpq_degree_scale), which a faiss IndexPQ cannot "
                              "hold; serve it with JPQEmbedding.topk, or train with jpq_degree_scale: 0")
        if table.row_log_length is not None:
            raise ExportError("this table decodes unit-length rows (jpq_unit_rows), which a faiss IndexPQ cannot "
                              "hold; serve it with JPQEmbedding.topk, or train with jpq_unit_rows: false")
        codes, sub_embeddings = table.codes, table.sub_embeddings
    if codes is None or sub_embeddings is None:
        raise ExportError("give a JPQEmbedding, or both codes [N, M] and sub_embeddings [M, ksub, dsub]")
    M, ksub, dsub = sub_embeddings.shape
    if codes.ndim != 2 or codes.shape[1] != M:
        raise ExportError(f"codes have shape {tuple(codes.shape)}; sub_embeddings need [N, {M}]")
    nbits = nbits_for(ksub)
    index = faiss.IndexPQ(M * dsub, M, nbits, faiss.METRIC_INNER_PRODUCT)
    centroids = sub_embeddings.detach().float().cpu().numpy().reshape(-1)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids), index.pq.centroids)
    index.is_trained = True
    index.add_sa_codes(pack_codes(codes, nbits))
    return index


def load_table(checkpoint: str, name: str) -> JPQEmbedding:
    """Rebuild the JPQ table ``name`` (e.g. ``item_embedding``) from a RecBole/torch checkpoint."""
    from urecjpq_plugin.checkpoint_file import read_checkpoint_file

    saved = read_checkpoint_file(checkpoint)
    state = saved.get("state_dict", saved) if isinstance(saved, dict) else {}
    tables = sorted(k[: -len(".sub_embeddings")] for k in state if k.endswith(".sub_embeddings"))
    if name not in tables:
        raise ExportError(f"--table {name!r} is not a JPQ table of {checkpoint!r}; JPQ tables there: {tables or 'none'}")
    table = JPQEmbedding.from_centroids(state[f"{name}.codes"], state[f"{name}.sub_embeddings"])
    table.set_row_scale(state.get(f"{name}.row_scale"))
    if f"{name}.row_log_length" in state:
        table.set_unit_rows(math.exp(float(state[f"{name}.row_log_length"])))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m urecjpq_plugin.export", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="checkpoint holding a JPQ table (e.g. from urecjpq compress or jpq: true)")
    p.add_argument("--table", default="item_embedding", help="JPQ table to export (default %(default)s)")
    p.add_argument("--out", required=True, help="faiss index file to write (must not exist)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if os.path.exists(args.out):
        raise ExportError(f"--out {args.out!r} already exists; choose a new path (nothing is overwritten)")
    index = to_faiss_index(load_table(args.checkpoint, args.table))
    _faiss().write_index(index, args.out)
    print(f"wrote {args.out}: IndexPQ d={index.d} M={index.pq.M} nbits={index.pq.nbits} ntotal={index.ntotal}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except URecJPQError as err:
        print(f"urecjpq export: error: {err}", file=sys.stderr)
        raise SystemExit(2)
