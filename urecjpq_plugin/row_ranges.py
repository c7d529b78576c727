"""RowRangeEmbedding: one shared ``nn.Embedding`` whose chosen row ranges are JPQ-compressed.

Context-aware models keep every token field in one table and add per-field offsets to the ids
(RecBole's ``FMEmbedding``: rows ``0:944`` users, ``944:2627`` items, then age, gender ...). This
module stands in for that table: the ranges of the ID fields become :class:`JPQEmbedding` parts
sharing the entities' codes, every other row stays an ordinary learned row (``kept_weight``), read
and updated exactly as in the plain table. Host-free; a host adapter decides which ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.jpq import JPQEmbedding


@dataclass(frozen=True)
class RowRange:
    """Rows ``start:stop`` of a shared table, read by one field and compressed with ``entity``'s codes."""

    field: str  # the host's field name ("user_id")
    entity: str  # whose codes: "user", "item"
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def sums_splits(width: int, M: int) -> bool:
    """Whether a table this wide is compressed as a sum of per-split rows rather than a concatenation.

    A ``width`` that ``M`` does not divide (the 1-d first-order weights of an FM) cannot be cut into
    ``M`` parts; each split then holds a full ``width``-row and the splits add up:
    ``w(i) = sum_k C[k, g(i, k)]`` (``M * ksub`` scalars for a 1-d table).
    """
    return width % M != 0


def compressed_params(width: int, M: int, ksub: int) -> int:
    """Trainable parameters of one compressed range of a ``width``-wide table."""
    return ksub * width * (M if sums_splits(width, M) else 1)


def kept_rows_mask(ranges: Sequence[RowRange], num_embeddings: int, device: Any = None) -> torch.Tensor:
    """``[num_embeddings]`` bool: the rows outside every compressed range (the ordinary learned rows)."""
    keep = torch.ones(num_embeddings, dtype=torch.bool, device=device)
    for r in ranges:
        keep[r.start:r.stop] = False
    return keep


def check_ranges(ranges: Sequence[RowRange], num_embeddings: int, table: str = "table") -> None:
    """Ranges must be non-empty, inside the table and disjoint."""
    previous = None
    for r in sorted(ranges, key=lambda r: r.start):
        if not 0 <= r.start < r.stop <= num_embeddings:
            raise JPQConfigError(
                f"row range {r.field} {r.start}:{r.stop} is outside {table}'s {num_embeddings} rows; "
                f"valid ranges lie within 0:{num_embeddings}"
            )
        if previous is not None and r.start < previous.stop:
            raise JPQConfigError(
                f"row ranges {previous.field} {previous.start}:{previous.stop} and {r.field} {r.start}:{r.stop} "
                f"of {table} overlap; each row belongs to at most one compressed field"
            )
        previous = r


class RowRangeEmbedding(nn.Module):
    """``nn.Embedding(num_embeddings, d)`` stand-in: ``forward(ids)``, ``.weight`` (decoded), same rows.

    Args:
        ranges: the compressed row ranges (disjoint, any order).
        parts: one :class:`JPQEmbedding` per range, ``ranges[i].rows`` rows each; its width is ``d``,
            or ``M * d`` when the splits are summed (:func:`sums_splits`).
        kept_weight: ``[num_embeddings - compressed rows, d]``: every other row, in table order.
        padding_idx: as in ``nn.Embedding`` (a kept padding row gets no gradient; a compressed one
            is its part's ``padding_idx``).
    """

    def __init__(
        self, ranges: Sequence[RowRange], parts: Sequence[JPQEmbedding], kept_weight: torch.Tensor,
        padding_idx: int | None = None,
    ):
        super().__init__()
        if len(ranges) != len(parts) or not ranges:
            raise JPQConfigError(f"give one JPQ part per row range (got {len(ranges)} ranges, {len(parts)} parts)")
        order = sorted(range(len(ranges)), key=lambda i: ranges[i].start)
        self.ranges = tuple(ranges[i] for i in order)
        self.embedding_dim = kept_weight.shape[1]
        self.num_embeddings = kept_weight.shape[0] + sum(r.rows for r in self.ranges)
        check_ranges(self.ranges, self.num_embeddings)
        for r, part in zip(self.ranges, (parts[i] for i in order)):
            if part.num_embeddings != r.rows:
                raise JPQConfigError(f"the JPQ part of {r.field} has {part.num_embeddings} rows; its range has {r.rows}")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += self.num_embeddings
        self.padding_idx = padding_idx
        self.kept_weight = nn.Parameter(kept_weight, requires_grad=kept_weight.requires_grad)
        # Parts are named by range position: field names may hold characters a module name cannot.
        self.parts = nn.ModuleList(parts[i] for i in order)
        # bucketize(ids, bounds, right=True) is odd inside range (b - 1) // 2, even in kept segment b // 2.
        bounds = [edge for r in self.ranges for edge in (r.start, r.stop)]
        self.register_buffer("bounds", torch.tensor(bounds, dtype=torch.int64), persistent=False)
        compressed_before = [0]
        for r in self.ranges:
            compressed_before.append(compressed_before[-1] + r.rows)
        self.register_buffer("kept_shift", torch.tensor(compressed_before, dtype=torch.int64), persistent=False)
        kept_padding = None
        if padding_idx is not None and not any(r.start <= padding_idx < r.stop for r in self.ranges):
            segment = sum(r.stop <= padding_idx for r in self.ranges)
            kept_padding = padding_idx - compressed_before[segment]
        self.kept_padding_idx = kept_padding

    @classmethod
    def from_table(
        cls, table: nn.Embedding | torch.Tensor, ranges: Sequence[RowRange], codes: Mapping[str, torch.Tensor],
        M: int | Mapping[str, int], ksub: int | Mapping[str, int], split_dropout: float = 0.0,
    ) -> RowRangeEmbedding:
        """Replace an initialised table: kept rows copied as they are; each range's part initialised
        like :meth:`JPQEmbedding.from_table` from that range's rows, with ``codes[range.entity]``.
        ``M`` / ``ksub``: one value, or one per entity (``jpq_table_overrides``)."""
        weight = table.weight if isinstance(table, nn.Embedding) else table
        padding_idx = table.padding_idx if isinstance(table, nn.Embedding) else None
        num_embeddings, width = weight.shape
        check_ranges(ranges, num_embeddings)
        parts = []
        for r in ranges:
            entity_codes = codes[r.entity].to(weight.device)
            range_M = M[r.entity] if isinstance(M, Mapping) else M
            range_ksub = ksub[r.entity] if isinstance(ksub, Mapping) else ksub
            if entity_codes.shape != (r.rows, range_M):
                raise JPQConfigError(
                    f"codes for {r.entity} have shape {tuple(entity_codes.shape)}; range {r.field} "
                    f"{r.start}:{r.stop} needs {(r.rows, range_M)}"
                )
            local_padding = padding_idx - r.start if padding_idx is not None and r.start <= padding_idx < r.stop else None
            parts.append(_part_from_rows(weight[r.start:r.stop], entity_codes, range_ksub, local_padding, split_dropout))
        kept = weight.detach()[kept_rows_mask(ranges, num_embeddings, weight.device)].clone().requires_grad_(weight.requires_grad)
        return cls(ranges, parts, kept, padding_idx).to(device=weight.device, dtype=weight.dtype)

    # -- reading --------------------------------------------------------------------------------
    def _part_rows(self, part: JPQEmbedding, local_ids: torch.Tensor) -> torch.Tensor:
        rows = part(local_ids)
        if part.embedding_dim != self.embedding_dim:  # summed splits (sums_splits)
            rows = rows.view(-1, part.M, self.embedding_dim).sum(1)
        return rows

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [...]`` (global rows of the shared table) -> ``[..., d]``."""
        flat = ids.reshape(-1)
        if flat.dtype.is_floating_point or flat.dtype.is_complex or flat.dtype == torch.bool:
            raise JPQConfigError(f"ids have dtype {flat.dtype}; like nn.Embedding, RowRangeEmbedding takes integer ids")
        flat = flat.long()
        bucket = torch.bucketize(flat, self.bounds, right=True)
        pieces, positions = [], []
        kept_at = (bucket % 2 == 0).nonzero().squeeze(1)
        if kept_at.numel():
            local = flat[kept_at] - self.kept_shift[bucket[kept_at] // 2]
            pieces.append(F.embedding(local, self.kept_weight, padding_idx=self.kept_padding_idx))
            positions.append(kept_at)
        for index, (r, part) in enumerate(zip(self.ranges, self.parts)):
            at = (bucket == 2 * index + 1).nonzero().squeeze(1)
            if at.numel():
                pieces.append(self._part_rows(part, flat[at] - r.start))
                positions.append(at)
        if not pieces:
            return self.kept_weight.new_zeros(*ids.shape, self.embedding_dim)
        rows, order = torch.cat(pieces), torch.cat(positions)
        # Rows came grouped by part; the inverse permutation puts each back at its id's position
        # (index_select's backward hands every row exactly its own gradient).
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return rows.index_select(0, inverse).view(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        """The decoded ``[num_embeddings, d]`` table (kept rows and decoded ranges, in table order)."""
        segments, kept_from, previous_stop = [], 0, 0
        for r, part in zip(self.ranges, self.parts):
            kept_rows = r.start - previous_stop
            segments.append(self.kept_weight[kept_from:kept_from + kept_rows])
            kept_from += kept_rows
            decoded = part.weight
            if part.embedding_dim != self.embedding_dim:  # summed splits (sums_splits)
                decoded = decoded.view(-1, part.M, self.embedding_dim).sum(1)
            segments.append(decoded)
            previous_stop = r.stop
        segments.append(self.kept_weight[kept_from:])
        return torch.cat(segments)

    def compressed_rows(self) -> int:
        return sum(r.rows for r in self.ranges)

    def extra_repr(self) -> str:
        spans = ", ".join(f"{r.field}[{r.start}:{r.stop}]->{r.entity}" for r in self.ranges)
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, compressed: {spans}; kept rows: {self.kept_weight.shape[0]}{pad}"


def _part_from_rows(
    rows: torch.Tensor, codes: torch.Tensor, ksub: int, padding_idx: int | None, split_dropout: float
) -> JPQEmbedding:
    """A JPQ part for ``rows`` of a table: concatenated splits, or summed ones where ``M`` does not divide
    the width (initialised so each decoded entry keeps the rows' mean and spread)."""
    M, width = codes.shape[1], rows.shape[1]
    if not sums_splits(width, M):
        return JPQEmbedding.from_table(rows, codes, ksub, padding_idx, split_dropout)
    part = JPQEmbedding(codes, ksub, M * width, padding_idx, split_dropout)
    values = rows.detach().float()
    mean = values.mean().item()
    std = values.std().item() if values.numel() > 1 else 0.0
    with torch.no_grad():  # a sum of M independent draws: mean / M and std / sqrt(M) each
        part.sub_embeddings.normal_(mean / M, (std if std > 0 else 0.05) / M**0.5)
    part.sub_embeddings.requires_grad_(rows.requires_grad)
    return part.to(device=rows.device, dtype=rows.dtype)
