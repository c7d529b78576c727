"""RowRangeEmbedding: a shared table whose chosen row ranges are JPQ-compressed, the rest kept as they were."""

import pytest
import torch
from torch import nn

from urecjpq_plugin.config import JPQConfigError
from urecjpq_plugin.row_ranges import RowRange, RowRangeEmbedding, compressed_params, sums_splits

RANGES = [RowRange("item_id", "item", 20, 40), RowRange("user_id", "user", 0, 12)]  # any order


def codes(M=2, ksub=4):
    gen = torch.Generator().manual_seed(0)
    return {"user": torch.randint(0, ksub, (12, M), generator=gen, dtype=torch.uint8),
            "item": torch.randint(0, ksub, (20, M), generator=gen, dtype=torch.uint8)}


def kept_mask(rows=50):
    keep = torch.ones(rows, dtype=torch.bool)
    keep[0:12] = keep[20:40] = False
    return keep


@pytest.mark.parametrize("width", [10, 1])  # an embedding table and a 1-d first-order table (summed splits)
def test_reads_like_the_table_it_replaces_and_keeps_other_rows(width):
    torch.manual_seed(0)
    plain = nn.Embedding(50, width)
    table = RowRangeEmbedding.from_table(plain, RANGES, codes(), M=2, ksub=4)
    ids = torch.randint(0, 50, (7, 6))
    assert table(ids).shape == (7, 6, width)
    assert torch.equal(table(ids), table.weight[ids])
    assert table.weight.shape == (50, width) and table.num_embeddings == 50 and table.embedding_dim == width
    assert torch.equal(table.weight[kept_mask()], plain.weight[kept_mask()])
    # rows sharing a code read the same vector: the compressed ranges are decoded from codes
    user_codes = codes()["user"]
    same = [(i, j) for i in range(12) for j in range(i + 1, 12) if torch.equal(user_codes[i], user_codes[j])]
    for i, j in same:
        assert torch.equal(table.weight[i], table.weight[j])
    expected = 18 * width + 2 * compressed_params(width, 2, 4)
    assert sum(p.numel() for p in table.parameters()) == expected
    assert sums_splits(width, 2) == (width == 1)


@pytest.mark.parametrize("width", [10, 1])
def test_kept_rows_get_exactly_the_plain_tables_gradient(width):
    torch.manual_seed(0)
    plain = nn.Embedding(50, width)
    table = RowRangeEmbedding.from_table(plain, RANGES, codes(), M=2, ksub=4)
    ids = torch.randint(0, 50, (64, 6))
    upstream = torch.randn(64, 6, width)
    table(ids).backward(upstream)
    plain(ids).backward(upstream)
    assert torch.equal(table.kept_weight.grad, plain.weight.grad[kept_mask()])
    assert all(part.sub_embeddings.grad.abs().sum() > 0 for part in table.parts)


def test_padding_row_is_honoured_where_it_falls():
    torch.manual_seed(0)
    for padding_idx, compressed in ((45, False), (3, True)):
        plain = nn.Embedding(50, 4, padding_idx=padding_idx)
        table = RowRangeEmbedding.from_table(plain, RANGES, codes(), M=2, ksub=4)
        ids = torch.tensor([padding_idx, padding_idx, 44, 5])
        out = table(ids)
        assert torch.equal(out[0], torch.zeros(4)) and table.padding_idx == padding_idx
        out.sum().backward()
        if compressed:
            assert table.parts[0].padding_idx == padding_idx
        else:
            assert torch.equal(table.kept_weight.grad[padding_idx - 32], torch.zeros(4))  # 32 rows compressed before it


def test_state_dict_round_trips_and_moves_with_the_module():
    torch.manual_seed(0)
    table = RowRangeEmbedding.from_table(nn.Embedding(50, 4), RANGES, codes(), M=2, ksub=4)
    state = table.state_dict()
    assert sorted(state) == ["kept_weight", "parts.0.codes", "parts.0.sub_embeddings",
                             "parts.1.codes", "parts.1.sub_embeddings"]
    other = RowRangeEmbedding.from_table(nn.Embedding(50, 4), RANGES, {e: torch.zeros_like(c) for e, c in codes().items()},
                                         M=2, ksub=4)
    other.load_state_dict(state)
    assert torch.equal(other.weight, table.weight)
    assert table.double().weight.dtype == torch.float64


@pytest.mark.parametrize(
    "ranges,message",
    [
        ([RowRange("user_id", "user", 0, 12), RowRange("item_id", "item", 10, 30)], "overlap"),
        ([RowRange("user_id", "user", 40, 52)], "outside table's 50 rows"),
    ],
)
def test_bad_ranges_are_one_line_errors(ranges, message):
    with pytest.raises(JPQConfigError, match=message):
        RowRangeEmbedding.from_table(nn.Embedding(50, 4), ranges, codes(), M=2, ksub=4)


def test_codes_must_fit_their_range():
    with pytest.raises(JPQConfigError, match=r"codes for user have shape \(12, 2\); range user_id 0:13 needs \(13, 2\)"):
        RowRangeEmbedding.from_table(nn.Embedding(50, 4), [RowRange("user_id", "user", 0, 13)], codes(), M=2, ksub=4)
