import pytest
import torch
from torch import nn

from urecjpq_plugin import JPQConfigError, JPQEmbedding
from urecjpq_plugin.codes import code_dtype, random_codes


@pytest.mark.parametrize("n,d,M,ksub", [(1, 8, 1, 2), (50, 16, 4, 16), (300, 64, 8, 256), (40, 12, 3, 300)])
def test_decode_is_concatenation_of_sub_embeddings(n, d, M, ksub):
    codes = random_codes(n, M, ksub, seed=n)
    emb = JPQEmbedding(codes, ksub, d)
    C = emb.sub_embeddings
    expected = torch.cat([C[k, codes[:, k].long()] for k in range(M)], dim=1)
    assert torch.equal(emb.weight, expected)
    assert torch.equal(emb.decode(codes), expected)
    ids = torch.randint(0, n, (7, 3))
    assert torch.equal(emb(ids), expected[ids])
    assert emb.codes.dtype == code_dtype(ksub)


def test_code_dtype_is_smallest_unsigned():
    assert code_dtype(2) == torch.uint8
    assert code_dtype(256) == torch.uint8
    assert code_dtype(257) == torch.uint16
    assert code_dtype(65536) == torch.uint16
    assert code_dtype(65537) == torch.uint32


def test_gradients_reach_only_used_sub_embeddings():
    codes = torch.tensor([[0, 1], [2, 1], [3, 3]])
    emb = JPQEmbedding(codes, ksub=4, embedding_dim=4)
    emb(torch.tensor([0])).sum().backward()
    assert [n for n, p in emb.named_parameters()] == ["sub_embeddings"]
    assert not emb.codes.requires_grad
    grad = emb.sub_embeddings.grad
    touched = {(k, j) for k in range(2) for j in range(4) if grad[k, j].abs().sum() > 0}
    assert touched == {(0, 0), (1, 1)}


def test_weight_is_differentiable():
    emb = JPQEmbedding(random_codes(10, 2, 4, 0), 4, 4)
    (emb.weight ** 2).sum().backward()
    assert emb.sub_embeddings.grad is not None and emb.sub_embeddings.grad.abs().sum() > 0


def test_padding_row_is_zero_and_gets_no_gradient():
    codes = torch.tensor([[1, 1], [1, 1], [0, 2]])  # row 0 shares sub-ids with row 1
    emb = JPQEmbedding(codes, ksub=4, embedding_dim=4, padding_idx=0)
    assert torch.equal(emb.weight[0], torch.zeros(4))
    assert torch.equal(emb(torch.tensor([0, 0])), torch.zeros(2, 4))
    emb(torch.tensor([0])).sum().backward()
    assert emb.sub_embeddings.grad.abs().sum() == 0
    assert emb.weight[1].abs().sum() > 0



@pytest.mark.parametrize("padding_idx", [None, 3])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_gradients_match_a_plain_gather_of_the_codebook(padding_idx, id_dtype):
    # The decode has its own backward (accumulating index_put_); check it against autograd's own
    # through plain indexing, for rows repeated many times, for forward(ids) and for .weight.
    codes = random_codes(40, 4, 8, seed=1)
    emb = JPQEmbedding(codes, ksub=8, embedding_dim=12, padding_idx=padding_idx)
    reference = emb.sub_embeddings.detach().clone().requires_grad_(True)

    def reference_decode(rows: torch.Tensor) -> torch.Tensor:
        out = torch.cat([reference[k, codes[rows, k].long()] for k in range(4)], dim=-1)
        return out if padding_idx is None else out * (rows != padding_idx).unsqueeze(-1)

    ids = torch.randint(0, 40, (64, 5))
    ids[0, :2] = 3
    upstream = torch.randn(64, 5, 12)
    (emb(ids.to(id_dtype)) * upstream).sum().backward()
    (reference_decode(ids) * upstream).sum().backward()
    assert torch.allclose(emb.sub_embeddings.grad, reference.grad, atol=1e-5)

    emb.sub_embeddings.grad, reference.grad = None, None
    upstream = torch.randn(40, 12)
    (emb.weight * upstream).sum().backward()
    (reference_decode(torch.arange(40)) * upstream).sum().backward()
    assert torch.allclose(emb.sub_embeddings.grad, reference.grad, atol=1e-5)


def test_from_table_keeps_shape_scale_and_trainability():
    table = nn.Embedding(5000, 32)
    nn.init.xavier_normal_(table.weight)
    emb = JPQEmbedding.from_table(table.weight, random_codes(5000, 4, 256, 0), 256)
    assert emb.weight.shape == table.weight.shape
    assert emb.sub_embeddings.std().item() == pytest.approx(table.weight.std().item(), rel=0.1)
    frozen = nn.Embedding(100, 8).requires_grad_(False)
    assert not JPQEmbedding.from_table(frozen.weight, random_codes(100, 2, 4, 0), 4).sub_embeddings.requires_grad


def test_state_dict_is_compact():
    emb = JPQEmbedding(random_codes(10_000, 8, 256, 0), 256, 64)
    state = emb.state_dict()
    assert set(state) == {"codes", "sub_embeddings"}
    assert state["codes"].dtype == torch.uint8
    assert emb.compact_bytes() == 10_000 * 8 + 8 * 256 * 8 * 4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(codes=torch.zeros(4, 3, dtype=torch.long), ksub=4, embedding_dim=8), "embedding_dim=8 should be a multiple of M=3"),
        (dict(codes=torch.full((4, 2), 4), ksub=4, embedding_dim=8), r"valid sub-ids are \[0, 4\)"),
        (dict(codes=torch.zeros(4, 2, dtype=torch.long), ksub=1, embedding_dim=8), "ksub=1 is out of range"),
    ],
)
def test_bad_construction_is_a_clear_error(kwargs, match):
    with pytest.raises(JPQConfigError, match=match):
        JPQEmbedding(**kwargs)


def test_weight_without_autograd_follows_every_change_of_the_table():
    emb = JPQEmbedding(random_codes(30, 2, 4, 0), 4, 8, padding_idx=2)

    def fresh() -> torch.Tensor:
        return torch.cat([emb.sub_embeddings[k, emb.codes[:, k].long()] for k in range(2)], 1).detach() * (
            torch.arange(30) != 2
        ).unsqueeze(1)

    with torch.no_grad():
        first = emb.weight
        assert torch.equal(first, fresh()) and emb.weight is first  # reused while nothing changed
        first.mul_(0)  # a caller writing into what it got must not poison later reads
        assert torch.equal(emb.weight, fresh())
    torch.optim.SGD(emb.parameters(), lr=1.0).zero_grad()
    (emb.weight ** 2).sum().backward()  # with autograd: a fresh differentiable decode
    torch.optim.SGD(emb.parameters(), lr=1.0).step()
    with torch.no_grad():
        assert torch.equal(emb.weight, fresh())
    emb.load_state_dict({"codes": random_codes(30, 2, 4, 1), "sub_embeddings": torch.randn(2, 4, 4)})
    with torch.no_grad():
        assert torch.equal(emb.weight, fresh())
    with torch.inference_mode():
        assert torch.equal(emb.weight, fresh())


@pytest.mark.parametrize("M", [4, 8, 16, 32])
def test_decoded_rows_start_at_the_hosts_scale_for_every_M(M):
    # A propagation model (LightGCN, NGCF) stalled when a swap started its rows at another scale
    # than the host's initialisation (early stopping near epoch 11); from_table keeps the scale
    # whatever M, so row norms and element spread match the table it replaces.
    torch.manual_seed(0)
    table = torch.nn.Embedding(2000, 64)
    torch.nn.init.xavier_normal_(table.weight)
    emb = JPQEmbedding.from_table(table.weight, random_codes(2000, M, 256, seed=M), 256)
    decoded = emb.weight.detach()
    assert decoded.std().item() == pytest.approx(table.weight.std().item(), rel=0.1)
    assert decoded.norm(dim=1).mean().item() == pytest.approx(table.weight.norm(dim=1).mean().item(), rel=0.1)
