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
    ids, queries = torch.tensor([0, 2, 5, 5]), torch.randn(3, 8)

    def reads_match() -> None:  # ids, .weight and score read the same (current) table
        assert torch.equal(emb.weight, fresh())
        assert torch.equal(emb(ids), fresh()[ids])
        assert torch.allclose(emb.score(queries), queries @ fresh().T, atol=1e-6)

    with torch.no_grad():
        reads_match()
    emb.load_state_dict({"codes": random_codes(30, 2, 4, 1), "sub_embeddings": torch.randn(2, 4, 4)})
    with torch.no_grad():
        reads_match()
    with torch.inference_mode():
        reads_match()


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


def _train_steps(emb: JPQEmbedding, steps: int, accumulate: int) -> tuple[list[torch.Tensor], set[bool]]:
    """A BPR-like loop: per micro-batch a user read and two item reads of the same table, one backward
    each, the optimizer stepping after ``accumulate`` micro-batches. Returns the losses and whether a
    per-step table was cached after each backward."""
    optimizer = torch.optim.Adam(emb.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(0)
    losses, cached = [], set()
    for _ in range(steps):
        for _ in range(accumulate):
            pos, neg = (torch.randint(0, emb.num_embeddings, (96,), generator=generator) for _ in range(2))
            loss = -torch.nn.functional.logsigmoid((emb(pos) * (emb(pos) - emb(neg))).sum(-1)).mean()
            loss.backward()
            losses.append(loss.detach())
            cached.add("table" in emb._cache)
        optimizer.step()
        assert "table" not in emb._cache  # the step moved the cache on
        optimizer.zero_grad()
    return losses, cached


@pytest.mark.parametrize("padding_idx", [None, 0])
@pytest.mark.parametrize("accumulate", [1, 3])
def test_per_step_table_trains_exactly_like_gathering_rows(padding_idx, accumulate):
    # 96 lookups a read >= 50 rows: reads share one decoded table per step; with the cache bound at 0
    # every read gathers its own rows. Both must give the same losses and sub-embeddings, also when
    # several backward passes run through one decoded table before the optimizer steps.
    codes = random_codes(50, 4, 8, seed=3)
    shared, gathered = (JPQEmbedding(codes, 8, 16, padding_idx=padding_idx) for _ in range(2))
    gathered.load_state_dict(shared.state_dict())
    shared_losses, cached = _train_steps(shared, steps=4, accumulate=accumulate)
    assert cached == {True}  # the shared path really ran
    gathered._cache.limit_bytes = 0
    gathered_losses, cached = _train_steps(gathered, steps=4, accumulate=accumulate)
    assert cached == {False}
    assert torch.allclose(torch.stack(shared_losses), torch.stack(gathered_losses), atol=1e-6)
    assert torch.allclose(shared.sub_embeddings, gathered.sub_embeddings, atol=1e-6)
    if padding_idx is not None:
        assert torch.equal(shared(torch.tensor([padding_idx] * 60)), torch.zeros(60, 16))


def test_per_step_table_is_not_used_for_small_reads_and_not_copied():
    import copy
    import pickle

    emb = JPQEmbedding(random_codes(50, 4, 8, seed=3), 8, 16)
    emb(torch.arange(10)).sum().backward()
    assert "table" not in emb._cache  # 10 lookups < 50 rows: only those rows were gathered
    emb(torch.arange(50).repeat(2)).sum().backward()
    assert "table" in emb._cache
    # mid-step, with a graph-carrying table cached: copies and pickles leave the cache behind
    for clone in (copy.deepcopy(emb), pickle.loads(pickle.dumps(emb))):
        assert "table" not in clone._cache
        assert torch.equal(clone.weight, emb.weight.detach())


@pytest.mark.parametrize("read", ["forward", "weight"])
def test_split_dropout_zeroes_whole_splits_in_training_only(read):
    torch.manual_seed(0)
    n, d, M, p = 50, 16, 4, 0.5
    table = JPQEmbedding(random_codes(n, M, 8, 0), 8, d, split_dropout=p)
    ids = torch.arange(n).repeat(40)
    decoded = table.decode(table.codes)[ids].detach()

    def read_rows():
        return table(ids) if read == "forward" else table.weight[ids]

    out = read_rows().detach()
    splits, full = out.view(-1, M, d // M), decoded.view(-1, M, d // M)
    dropped = (splits == 0).all(-1)
    assert 0.45 < dropped.float().mean() < 0.55  # whole splits, at rate p
    assert torch.allclose(splits[~dropped], full[~dropped] / (1 - p))  # the rest rescaled: unbiased
    out.sum().backward() if out.requires_grad else None
    table.eval()
    assert torch.equal(read_rows().detach(), decoded)  # eval mode: the plain decode
    table.train()
    with torch.no_grad():
        assert torch.equal(read_rows(), decoded)  # no autograd (evaluation inside a training loop): none


def test_apply_jpq_trains_with_split_dropout_by_default_and_zero_turns_it_off():
    from urecjpq_plugin import JPQConfig, apply_jpq

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding, self.item_embedding = nn.Embedding(40, 16), nn.Embedding(30, 16)

    for dropout, differs in ((None, True), (0.0, False)):
        model = Tiny()
        cfg = JPQConfig(M=4, ksub=8, code_assign="random") if dropout is None else JPQConfig(
            M=4, ksub=8, code_assign="random", split_dropout=dropout)
        apply_jpq(model, cfg, {"user": 40, "item": 30})
        table = model.item_embedding
        assert table.split_dropout == (0.1 if dropout is None else 0.0)
        torch.manual_seed(1)
        ids = torch.arange(30).repeat(20)
        assert (not torch.equal(table(ids), table.decode(table.codes)[ids])) == differs


@pytest.mark.parametrize("value", [-0.1, 1.0, "high", True])
def test_bad_split_dropout_is_a_clear_error(value):
    from urecjpq_plugin import JPQConfig

    with pytest.raises(JPQConfigError, match="jpq_split_dropout="):
        JPQConfig.from_mapping({"jpq_split_dropout": value})


@pytest.mark.parametrize("ids", [torch.tensor([1.7, 2.2]), torch.tensor([True, False])])
def test_non_integer_ids_are_refused_like_nn_embedding(ids):
    from urecjpq_plugin.jpq import JPQIdError

    table = JPQEmbedding(random_codes(10, 2, 4, 0), 4, 8)
    with pytest.raises(JPQIdError, match=f"ids have dtype {ids.dtype}"):
        table(ids)
    with pytest.raises((RuntimeError, IndexError, TypeError)):
        nn.Embedding(10, 8)(ids)  # the contract followed
    assert isinstance(JPQIdError("x"), ValueError)
