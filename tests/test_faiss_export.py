"""faiss IndexPQ export: same decoded vectors, same inner-product top-k as topk_from_codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.export import ExportError, load_table, main, nbits_for, pack_codes, to_faiss_index
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.topk import topk_from_codes

faiss = pytest.importorskip("faiss", reason="faiss not importable: pip install faiss-cpu (extra 'faiss') to run these")


def make_table(n, d, M, ksub, seed=0):
    torch.manual_seed(seed)
    table = JPQEmbedding(random_codes(n, M, ksub, seed), ksub, d)
    with torch.no_grad():
        table.sub_embeddings.normal_()
    return table


@pytest.mark.parametrize("n,d,M,ksub", [(300, 16, 4, 256), (1000, 32, 8, 16), (500, 24, 3, 2), (2000, 64, 8, 1024)])
def test_faiss_decodes_the_same_vectors_and_returns_the_same_topk(n, d, M, ksub):
    table = make_table(n, d, M, ksub)
    index = to_faiss_index(table)
    assert index.ntotal == n and index.is_trained and index.pq.nbits == nbits_for(ksub)
    stored = faiss.vector_to_array(index.codes).reshape(n, -1)
    decoded = index.sa_decode(stored)
    np.testing.assert_allclose(decoded, table.weight.detach().numpy(), rtol=1e-6, atol=1e-6)
    queries = torch.randn(5, d)
    k = 10
    distances, ids = index.search(queries.numpy(), k)
    with torch.no_grad():
        values, indices = topk_from_codes(queries, table.sub_embeddings, table.codes, k)
    np.testing.assert_allclose(distances, values.numpy(), rtol=1e-4, atol=1e-4)
    # Ties aside the same items: every id faiss returns really has the score at its rank.
    scores = (queries @ table.weight.detach().T).numpy()
    np.testing.assert_allclose(np.take_along_axis(scores, ids, 1), values.numpy(), rtol=1e-4, atol=1e-4)
    if ksub >= 16:  # few ties: the very same ids
        assert (ids == indices.numpy()).mean() > 0.98


def test_pack_codes_is_bytes_for_8_bits_and_lsb_first_below():
    codes = torch.tensor([[1, 2, 3], [15, 0, 7]])
    assert pack_codes(codes, 8).tolist() == [[1, 2, 3], [15, 0, 7]]
    # nbits=4: two sub-ids per byte, the first in the low nibble; 3*4 bits -> 2 bytes
    assert pack_codes(codes, 4).tolist() == [[1 | 2 << 4, 3], [15 | 0 << 4, 7]]


@pytest.mark.parametrize("ksub", [3, 100, 1])
def test_ksub_must_be_a_power_of_two(ksub):
    with pytest.raises(ExportError, match=f"ksub={ksub}"):
        nbits_for(ksub)


def test_export_command_writes_a_readable_index_and_refuses_to_overwrite(tmp_path):
    table = make_table(200, 16, 4, 16)
    ckpt = tmp_path / "model.pth"
    torch.save({"state_dict": {f"item_embedding.{k}": v for k, v in table.state_dict().items()}}, ckpt)
    out = tmp_path / "items.faiss"
    assert main([str(ckpt), "--out", str(out)]) == 0
    index = faiss.read_index(str(out))
    assert index.ntotal == 200
    assert torch.equal(load_table(str(ckpt), "item_embedding").codes, table.codes)
    with pytest.raises(ExportError, match="already exists"):
        main([str(ckpt), "--out", str(out)])
    with pytest.raises(ExportError, match="user_embedding"):
        main([str(ckpt), "--table", "user_embedding", "--out", str(tmp_path / "u.faiss")])
