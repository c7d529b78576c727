"""JPQEmbedding: a drop-in ``nn.Embedding`` whose rows are concatenated shared sub-embeddings.

``e(i) = C[0, g(i,0)] || ... || C[M-1, g(i,M-1)]`` with fixed codes ``g`` (a uint buffer) and
learned ``C [M, ksub, dsub]`` (the only Parameter), ``dsub = d / M``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from urecjpq_plugin.codes import as_codes
from urecjpq_plugin.config import JPQConfigError, URecJPQError
from urecjpq_plugin.decode_cache import DecodeCache


class JPQIdError(URecJPQError, TypeError):
    """Ids that are not integers (``nn.Embedding`` refuses them too)."""


class _GatherRows(torch.autograd.Function):
    """``table.index_select(0, rows)`` whose backward accumulates with ``index_put_``.

    Decoding repeats each codebook row many times (every ID sharing a sub-id). Measured on CPU, 1
    thread, 32k-330k rows into a [2048, 8] codebook: ``F.embedding``'s backward took 3-6x and
    ``index_select``'s (``index_add_``) 1.4-2x the time of an accumulating ``index_put_``.
    Same values, same gradient.

    ``rows`` is an intermediate, kept on ``ctx`` rather than saved for backward: a backward pass does
    not free it, so a decoded table shared by several losses (the per-step table of
    :class:`JPQEmbedding`, gradient accumulation) can be back-propagated more than once.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.rows = rows
        ctx.table_shape = table.shape
        return table.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        table_grad = grad.new_zeros(ctx.table_shape)
        if grad.device.type != "cpu":
            # CUDA: index_put_(accumulate=True) sorts the indices on every call; index_add_ adds atomically
            # without a sort (the usual choice there; unmeasured until benchmarks/gpu_check.sh runs on a GPU).
            return table_grad.index_add_(0, ctx.rows, grad), None
        return table_grad.index_put_((ctx.rows,), grad, accumulate=True), None


def gather_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` (int64, 1-D) of a 2-D ``table``, differentiable in ``table``."""
    if table.requires_grad and torch.is_grad_enabled():
        return _GatherRows.apply(table, rows)
    return table.index_select(0, rows)


class JPQEmbedding(nn.Module):
    """``nn.Embedding`` replacement: ``forward(ids)``, ``.weight`` (decoded, differentiable), ``score``.

    Args:
        codes: ``[num_embeddings, M]`` sub-ids in ``[0, ksub)``.
        ksub: sub-ids per split (rows of each codebook).
        embedding_dim: ``d``; must be a multiple of ``M``.
        padding_idx: as in ``nn.Embedding``: that row decodes to zeros and gets no gradient.
        split_dropout: in training mode, each looked-up row's sub-embeddings are zeroed with this
            probability, independently per split, and the rest scaled by ``1 / (1 - p)`` (inverted
            dropout over the ``M`` slots of a code). Shared sub-embeddings otherwise fit the training
            pairs through combinations of splits within a few epochs and then drift on sparse data;
            dropping splits makes every split carry the ID on its own. The measured effect is small
            (docs/benchmarks.md, "Sparse catalogues"): RecBole BPR on Amazon Baby -11.0 % -> -10.7 % recall@20 vs
            uncompressed, on ml-100k +1.0 % over no dropout (3 seeds each).

    An optional per-ID ``row_scale`` (:meth:`set_row_scale`; a uint8 buffer, level / 255) multiplies each
    decoded row: the evidence (degree) scale of sparse catalogues, see :func:`~urecjpq_plugin.assign.degree_scales`.
    Shared sub-embeddings give an ID seen once the same norm as a popular one; an uncompressed table
    keeps such rows near their small initial values, which is the popularity prior the scale restores.

    Optional unit rows (:meth:`set_unit_rows`): each decoded row scaled to unit length times one learned
    length per table (a scalar parameter, kept as its log), before the row scale. Shared sub-embeddings
    otherwise lower a sparse catalogue's training loss by growing the norms of the rows that many IDs
    share, which ranks the popular items above the rest: with unit rows LightGCN on Amazon Baby keeps
    the mid-popular items (docs/benchmarks.md, "Sparse catalogues", eleventh round).

    Decoded tables and faiss's scan structures are kept in one :class:`~urecjpq_plugin.decode_cache.DecodeCache`
    per module (one size limit in bytes, moved on by optimizer steps, ``load_state_dict``, ``.to()``
    and in-place writes): call :meth:`invalidate_cache` after writing through ``.data`` outside an
    optimizer step, the one change it cannot see.
    """

    def __init__(
        self, codes: torch.Tensor, ksub: int, embedding_dim: int, padding_idx: int | None = None,
        split_dropout: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= split_dropout < 1.0:
            raise JPQConfigError(f"split_dropout={split_dropout!r} is invalid; it must be in [0, 1)")
        self.split_dropout = float(split_dropout)
        codes = as_codes(codes, ksub)
        num_embeddings, M = codes.shape
        if embedding_dim % M:
            raise JPQConfigError(f"embedding_dim={embedding_dim} should be a multiple of M={M}")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.M, self.ksub, self.dsub = M, ksub, embedding_dim // M
        self.register_buffer("codes", codes)
        # Offsets turn per-split sub-ids into rows of the flattened [M * ksub, dsub] codebook.
        self.register_buffer("offsets", torch.arange(M) * ksub, persistent=False)
        self.sub_embeddings = nn.Parameter(torch.empty(M, ksub, self.dsub))
        nn.init.uniform_(self.sub_embeddings, -0.05, 0.05)  # RecJPQ's default
        self.register_buffer("row_scale", None)  # optional uint8 [num_embeddings]; see set_row_scale
        self.register_parameter("row_log_length", None)  # optional 0-dim; see set_unit_rows
        self._cache = DecodeCache(self, JPQEmbedding._weight_stamp)

    def invalidate_cache(self) -> None:
        """Forget decoded tables (needed only after writes through ``.data`` outside an optimizer step)."""
        self._cache.invalidate()

    def set_row_scale(self, scale: torch.Tensor | None) -> None:
        """Multiply each decoded row by ``scale [num_embeddings]`` in [0, 1], stored as uint8 levels of 1/255
        (1 byte per ID beside the M code bytes); ``None`` removes it."""
        if scale is None:
            self.row_scale = None
            return
        scale = torch.as_tensor(scale)
        if scale.shape != (self.num_embeddings,):
            raise JPQConfigError(f"row_scale has shape {tuple(scale.shape)}; this table needs ({self.num_embeddings},)")
        if scale.is_floating_point():
            if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()) or bool((scale > 1).any()):
                raise JPQConfigError("row_scale must hold finite values in [0, 1]")
            scale = scale.mul(255).round_()
        self.row_scale = scale.to(device=self.codes.device, dtype=torch.uint8)

    def set_unit_rows(self, length: float | None = 1.0) -> None:
        """Decode every row to unit length times one learned ``length`` (> 0) shared by the table; ``None``
        turns it off. Call before the optimizer is built: it adds a parameter (trainable with the
        sub-embeddings)."""
        if length is None:
            self.row_log_length = None
        else:
            if isinstance(length, bool) or not isinstance(length, (int, float)) or not math.isfinite(length) or length <= 0:
                raise JPQConfigError(f"unit row length {length!r} is invalid; it must be a finite number > 0")
            sub = self.sub_embeddings
            self.row_log_length = nn.Parameter(torch.tensor(math.log(length), device=sub.device, dtype=sub.dtype),
                                               requires_grad=sub.requires_grad)
        self._cache.invalidate()

    def _unit(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [n, d]`` at unit length times the learned length, when the table has unit rows."""
        if self.row_log_length is None:
            return rows
        return F.normalize(rows, dim=-1) * self.row_log_length.exp()

    def _code_lengths(self, chunk: int = 1 << 18) -> torch.Tensor:
        """``[num_embeddings]`` norms of the decoded rows before unit scaling, from the codes alone.

        In chunks of IDs: the int64 row numbers of all codes at once would be 8x the codes (1.3 GB at 10^7 IDs)."""
        sq = self.sub_embeddings.pow(2).sum(-1).reshape(-1)  # [M * ksub] squared norms of the sub-embeddings
        parts = [sq.index_select(0, self._flat_rows(self.codes[start:start + chunk])).view(-1, self.M).sum(1)
                 for start in range(0, self.num_embeddings, chunk)]
        return torch.cat(parts).sqrt()

    def _multipliers(self, dtype: torch.dtype) -> torch.Tensor | None:
        """``[num_embeddings, 1]`` multipliers of the raw decoded rows (unit rows, row scale), or ``None``."""
        scale = self._row_scale_of(None, dtype)
        if self.row_log_length is None:
            return scale

        def unit_multipliers() -> torch.Tensor:
            return (self.row_log_length.exp() / self._code_lengths().clamp_min(1e-12)).to(dtype).unsqueeze(-1)

        # Evaluation scores batch after batch from the same codebooks: one pass over all codes per change of the
        # sub-embeddings (the cache's stamp moves with them), not one per call.
        unit = unit_multipliers() if torch.is_grad_enabled() else self._cache.get(f"unit_multipliers:{dtype}", unit_multipliers)
        return unit if scale is None else unit * scale

    def _row_scale_of(self, ids: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """``[n, 1]`` multipliers of ``ids`` (all rows when ``None``), or ``None`` without a row scale."""
        if self.row_scale is None:
            return None
        levels = self.row_scale if ids is None else self.row_scale.index_select(0, ids)
        return levels.to(dtype).div_(255).unsqueeze(-1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # A checkpoint with a row scale loads into a table built without one (placeholder codes on load).
        key = prefix + "row_scale"
        if self.row_scale is None and key in state_dict:
            self.row_scale = torch.zeros(self.num_embeddings, dtype=torch.uint8, device=self.codes.device)
        if self.row_log_length is None and prefix + "row_log_length" in state_dict:
            self.set_unit_rows(1.0)  # a checkpoint trained with unit rows; its length is copied in below
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._cache.invalidate()

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .half(): new storage, maybe a new dtype; whatever was derived is stale.
        result = super()._apply(fn, *args, **kwargs)
        self._cache.invalidate()
        return result

    @classmethod
    def from_table(
        cls, table: torch.Tensor, codes: torch.Tensor, ksub: int, padding_idx: int | None = None,
        split_dropout: float = 0.0,
    ) -> JPQEmbedding:
        """Replace an initialised table: same shape, device, dtype, trainability and init scale.

        Sub-embeddings are drawn from N(mean, std) of the table's entries, so decoded rows have the
        element scale the host's own initialisation gave (xavier, normal, uniform ...).
        """
        num_embeddings, dim = table.shape
        if codes.shape[0] != num_embeddings:
            raise JPQConfigError(f"codes have {codes.shape[0]} rows but the table has {num_embeddings}")
        module = cls(codes, ksub, dim, padding_idx, split_dropout)
        values = table.detach().float()
        if padding_idx is not None and num_embeddings > 1:
            values = values[torch.arange(num_embeddings, device=values.device) != module.padding_idx]
        mean, std = values.mean().item(), values.std().item() if values.numel() > 1 else 0.05
        with torch.no_grad():
            module.sub_embeddings.normal_(mean, std if std > 0 else 0.05)
        module.sub_embeddings.requires_grad_(table.requires_grad)
        return module.to(device=table.device, dtype=table.dtype)

    @classmethod
    def from_centroids(
        cls, codes: torch.Tensor, centroids: torch.Tensor, padding_idx: int | None = None
    ) -> JPQEmbedding:
        """Build from product-quantisation output (``codes``, ``centroids [M, ksub, dsub]``)."""
        M, ksub, dsub = centroids.shape
        module = cls(codes, ksub, M * dsub, padding_idx)
        with torch.no_grad():
            module.sub_embeddings.copy_(centroids)
        return module

    # -- encode/decode ------------------------------------------------------------------------
    def _flat_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [..., M]`` -> int64 rows of the flat ``[M * ksub, dsub]`` codebook, one per sub-id.

        Built per call rather than cached: a cached int64 index would be 8x the uint8 codes.
        (``to(int64).add_`` is several times faster on CPU than ``codes.long() + offsets``.)
        """
        return codes.reshape(-1, self.M).to(torch.int64, copy=True).add_(self.offsets).reshape(-1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes [..., M]`` -> vectors ``[..., d]`` (concatenated sub-embeddings, at unit length times the learned
        length with unit rows; a row scale belongs to ids, not codes)."""
        return self._unit(self._gather(codes, None)).view(*codes.shape[:-1], self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [...]`` -> ``[..., d]``: gathers the rows asked for, or reads a decoded table where
        that is cheaper (see :meth:`_step_table` and :meth:`_eval_table`)."""
        flat_ids = ids.reshape(-1)
        if flat_ids.dtype.is_floating_point or flat_ids.dtype.is_complex or flat_ids.dtype == torch.bool:
            raise JPQIdError(f"ids have dtype {flat_ids.dtype}; like nn.Embedding, JPQEmbedding takes integer ids")
        if flat_ids.dtype not in (torch.int64, torch.int32):
            flat_ids = flat_ids.long()  # integer ids of any width
        if torch.is_grad_enabled() and self.sub_embeddings.requires_grad:
            table = self._step_table(flat_ids.numel())
        else:
            table = self._eval_table(flat_ids.numel())
        if table is not None:
            rows = F.embedding(flat_ids, table)
        else:
            is_padding = None if self.padding_idx is None else flat_ids == self.padding_idx
            # index_select: ~5x faster than codes[ids]
            rows = self._unit(self._gather(self.codes.index_select(0, flat_ids), is_padding))
            scale = self._row_scale_of(flat_ids, rows.dtype)
            rows = rows if scale is None else rows * scale
        return self._drop_splits(rows).view(*ids.shape, self.embedding_dim)

    def _drop_splits(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows [n, d]`` with each split zeroed at rate ``split_dropout`` (training with autograd only)."""
        p = self.split_dropout
        if not (p and self.training and torch.is_grad_enabled()):
            return rows
        keep = torch.rand(rows.shape[0], self.M, 1, device=rows.device) >= p
        return (rows.view(-1, self.M, self.dsub) * keep.to(rows.dtype).div_(1 - p)).view(rows.shape)

    def _gather(self, codes: torch.Tensor, is_padding: torch.Tensor | None) -> torch.Tensor:
        """Decoded rows ``[n, d]`` of ``codes [n, M]``, zeros where ``is_padding [n]``, differentiable."""
        rows = self._flat_rows(codes)
        table = self.sub_embeddings.reshape(self.M * self.ksub, self.dsub)
        if is_padding is not None:
            # Padding ids read an appended constant zero row: masking M int64 row numbers per id
            # costs far less than masking the d floats of the output and of its gradient
            # (SimpleX pads every user history: 200k padded lookups a batch). Neither the mask nor
            # the concatenation keeps a tensor for backward, so no backward pass frees anything.
            rows.view(-1, self.M).masked_fill_(is_padding.unsqueeze(-1), table.shape[0])
            table = torch.cat([table, table.new_zeros(1, self.dsub)])
        return gather_rows(table, rows).view(-1, self.embedding_dim)

    def _decode_all(self) -> torch.Tensor:
        is_padding = None
        if self.padding_idx is not None:
            is_padding = torch.arange(self.num_embeddings, device=self.codes.device) == self.padding_idx
        rows = self._unit(self._gather(self.codes, is_padding))
        scale = self._row_scale_of(None, rows.dtype)
        return rows if scale is None else rows * scale

    @property
    def weight(self) -> torch.Tensor:
        """The decoded ``[num_embeddings, d]`` table, for hosts that read ``.weight`` (SimpleX reads it every
        batch): kept in the module's cache when it fits, with autograd as the per-step table, without
        it for evaluation."""
        if torch.is_grad_enabled() and self.sub_embeddings.requires_grad:
            table = self._cache.peek("table")
            if table is None or not table.requires_grad:
                table = self._keep_if_it_fits(self._decode_all())
            return self._drop_splits(table)
        table = self._eval_table(self.num_embeddings)
        return self._drop_splits(table if table is not None else self._decode_all())

    def _eval_table(self, lookups: int) -> torch.Tensor | None:
        """Without autograd, the decoded table when it is cached or worth decoding whole, else ``None``.

        Worth it when this read alone asks for at least as many rows as the table has, or at the second
        read since the sub-embeddings last changed (evaluation reads a few users per batch, many batches;
        one read per training step, e.g. a no-grad target, keeps gathering its rows).
        """
        table = self._cache.peek("table")
        if table is not None:
            return table.detach() if table.requires_grad else table  # a per-step table serves these reads too
        if torch.is_inference_mode_enabled() or not self._cache.fits(self._table_bytes()):
            return None  # nothing could be kept: gather the rows asked for
        if lookups >= self.num_embeddings or self._cache.count_read() >= 2:
            with torch.no_grad():
                return self._cache.put("table", self._decode_all())
        return None

    def _step_table(self, lookups: int) -> torch.Tensor | None:
        """The differentiable decoded table shared by every read of one training step, or ``None``.

        Decoding costs one gather of ``M`` codebook rows per table row and one scatter back in
        backward; lookups through the decoded table then cost what ``nn.Embedding``'s do. A step that
        reads the table more than once (BPR: positives and negatives; SimpleX: histories, positives,
        negatives; SGL: three propagations) pays the decode once. Built only when this read alone has at
        least as many lookups as the table has rows and the table fits the cache, so large catalogues
        keep gathering only the rows asked for.
        """
        table = self._cache.peek("table")
        if table is not None and table.requires_grad:
            return table
        if lookups >= self.num_embeddings and self._cache.fits(self._table_bytes()):
            return self._cache.put("table", self._decode_all())
        return None

    def _keep_if_it_fits(self, table: torch.Tensor) -> torch.Tensor:
        return self._cache.put("table", table) if self._cache.fits(self._table_bytes()) else table

    def _table_bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * self._parameters["sub_embeddings"].element_size()

    def _weight_stamp(self) -> tuple:
        # Version counters move on every in-place change (optimizer steps, load_state_dict);
        # data_ptr/dtype catch replaced storage (.data = ...).
        sub, codes, scale = self._parameters["sub_embeddings"], self._buffers["codes"], self._buffers["row_scale"]
        scale_stamp = None if scale is None else (scale._version, scale.data_ptr())
        length = self._parameters["row_log_length"]
        length_stamp = None if length is None else (length._version, length.data_ptr())
        return (sub._version, sub.data_ptr(), sub.dtype, codes._version, codes.data_ptr(), scale_stamp, length_stamp)

    def __getstate__(self) -> dict:
        # The cache is derived state (a per-step table carries an autograd graph: no copy, no pickle).
        state = dict(super().__getstate__())
        state.pop("_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._cache = DecodeCache(self, JPQEmbedding._weight_stamp)

    def score(self, queries: torch.Tensor) -> torch.Tensor:
        """``queries [B, d]`` -> ``[B, num_embeddings]`` dot products with the rows (padding column 0).

        Through the decoded table where it fits the module's cache; else without one: a lookup-table scan
        over the codes for few queries, chunked decode + matmul for big batches, whichever
        :func:`~urecjpq_plugin.topk.scores_from_codes` measures cheaper.
        """
        from urecjpq_plugin.topk import scores_from_codes  # local import: topk builds on this module

        if not torch.is_grad_enabled() and queries.dim() == 2 and queries.shape[1] == self.embedding_dim:
            # Scoring reads every row: where the decoded table fits the cache, one decode serves every
            # call until the sub-embeddings change, and a call costs the uncompressed q @ W.T.
            table = self._eval_table(self.num_embeddings)
            if table is not None:
                return queries.to(table.dtype) @ table.T
        scores = scores_from_codes(queries, self.sub_embeddings, self.codes, self.padding_idx)
        scale = self._multipliers(scores.dtype)
        return scores if scale is None else scores * scale.view(*([1] * (scores.dim() - 1)), -1)

    def topk(self, queries: torch.Tensor, k: int, exclude=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` rows by dot product with ``queries [B, d]``, best first, never ``padding_idx`` nor an
        ``exclude``d item; bounded memory (faiss/torch scan or chunked matmul, see ``topk_from_codes``)."""
        from urecjpq_plugin.topk import topk_from_codes

        with torch.no_grad():
            multipliers = self._multipliers(self.sub_embeddings.dtype)
        return topk_from_codes(queries, self.sub_embeddings, self.codes, k, exclude=exclude, padding_idx=self.padding_idx,
                               row_scale=multipliers, cache=self._cache)

    # -- sizes ----------------------------------------------------------------------------------
    def trainable_count(self) -> int:
        """Parameters this table trains: the sub-embeddings, plus the unit rows' length."""
        return self.sub_embeddings.numel() + (0 if self.row_log_length is None else 1)

    def compact_bytes(self) -> int:
        """Bytes of codes plus sub-embeddings (what the checkpoint stores)."""
        scale_bytes = 0 if self.row_scale is None else self.row_scale.numel()
        scale_bytes += 0 if self.row_log_length is None else self.row_log_length.element_size()
        return (self.codes.numel() * self.codes.element_size() + scale_bytes
                + self.sub_embeddings.numel() * self.sub_embeddings.element_size())

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        pad += f", split_dropout={self.split_dropout:g}" if self.split_dropout else ""
        pad += ", row_scale" if self.row_scale is not None else ""
        pad += ", unit_rows" if self.row_log_length is not None else ""
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, M={self.M}, ksub={self.ksub}, "
            f"codes={str(self.codes.dtype).replace('torch.', '')}{pad}"
        )
