"""The plugin on CUDA: the same results as on the CPU, end to end. Skipped without a CUDA device.

    python -m pytest -q -m cuda          # this group alone (benchmarks/gpu_check.sh runs it first)

MMRec's FREEDOM runs when ``MMREC_SRC`` points to MMRec's ``src/`` (as in test_mmrec_e2e.py).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from urecjpq_plugin import JPQConfig, apply_jpq, jpq_state_dict, load_jpq
from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding
from urecjpq_plugin.topk import topk_from_codes

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (run on a GPU: python -m pytest -m cuda)"),
]


def _pair(ksub: int, n: int = 4000, M: int = 8, d: int = 64, padding_idx=0) -> tuple[JPQEmbedding, JPQEmbedding]:
    torch.manual_seed(0)
    cpu = JPQEmbedding(random_codes(n, M, ksub, 0), ksub, d, padding_idx=padding_idx)
    gpu = JPQEmbedding(cpu.codes.clone(), ksub, d, padding_idx=padding_idx).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("ksub", [256, 1024])  # uint8 and uint16 codes
@pytest.mark.parametrize("lookups", [64, 9000])  # gathered rows, and the per-step table
def test_forward_and_backward_match_the_cpu(ksub, lookups):
    cpu, gpu = _pair(ksub)
    ids = torch.randint(0, 4000, (lookups,))
    ids[:5] = 0  # padding
    outs = []
    for module, device in ((cpu, "cpu"), (gpu, "cuda")):
        out = module(ids.to(device))
        out.square().sum().backward()
        outs.append((out.detach().cpu(), module.sub_embeddings.grad.cpu()))
        if lookups >= 4000:
            assert "table" in module._cache  # the per-step table served the read
    torch.testing.assert_close(outs[1][0], outs[0][0])
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-5)
    assert torch.equal(outs[1][0][:5], torch.zeros(5, 64))


def test_training_steps_match_the_cpu():
    cpu, gpu = _pair(256)
    losses = {}
    for module, device in ((cpu, "cpu"), (gpu, "cuda")):
        optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(1)
        losses[device] = []
        for _ in range(5):
            pos, neg = (torch.randint(1, 4000, (4096,), generator=generator).to(device) for _ in range(2))
            loss = -torch.nn.functional.logsigmoid((module(pos) * (module(pos) - module(neg))).sum(-1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[device].append(loss.item())
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-4)
    torch.testing.assert_close(gpu.sub_embeddings.detach().cpu(), cpu.sub_embeddings.detach(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method", ["auto", "lut", "matmul"])
def test_score_and_topk_match_the_cpu_with_exclusions_and_padding(method):
    cpu, gpu = _pair(256, n=20000)
    queries = torch.randn(33, 64)
    generator = torch.Generator().manual_seed(2)
    exclude = [torch.randint(0, 20000, (int(n),), generator=generator) for n in torch.randint(0, 300, (33,), generator=generator)]
    with torch.no_grad():
        torch.testing.assert_close(gpu.score(queries.cuda()).cpu(), cpu.score(queries), rtol=1e-4, atol=1e-4)
        expected = topk_from_codes(queries, cpu.sub_embeddings, cpu.codes, 20, exclude=exclude, padding_idx=0,
                                   method="matmul")
        got = topk_from_codes(queries.cuda(), gpu.sub_embeddings, gpu.codes, 20, exclude=[e.cuda() for e in exclude],
                              padding_idx=0, method="matmul" if method == "auto" else method)
    torch.testing.assert_close(got[0].cpu(), expected[0], rtol=1e-4, atol=1e-4)
    same = (got[1].cpu() == expected[1]).float().mean().item()
    assert same > 0.99  # ties in float order aside
    for row, ids in enumerate(exclude):
        assert not set(got[1][row].tolist()) & set(ids.tolist())
    assert not (got[1] == 0).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_reads_and_scores(dtype):
    cpu, gpu = _pair(256)
    ids = torch.randint(0, 4000, (512,), device="cuda")
    queries = torch.randn(8, 64, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        rows = gpu(ids)
        scores = queries @ gpu.weight.T
        loss = scores.float().logsumexp(-1).mean() + rows.float().square().mean()
    loss.backward()
    assert torch.isfinite(gpu.sub_embeddings.grad).all()
    with torch.no_grad():
        reference = queries @ gpu.weight.T
    torch.testing.assert_close(scores.float(), reference, rtol=0.05, atol=0.05)


def test_checkpoint_from_gpu_loads_on_cpu(tmp_path):
    class BPR(nn.Module):
        def __init__(self):
            super().__init__()
            self.user_embedding, self.item_embedding = nn.Embedding(300, 64), nn.Embedding(500, 64)

    model = BPR().cuda()
    apply_jpq(model, JPQConfig(M=16, ksub=128, code_assign="random"), {"user": 300, "item": 500})
    torch.save(jpq_state_dict(model), tmp_path / "jpq.pt")
    fresh = BPR()
    load_jpq(fresh, torch.load(tmp_path / "jpq.pt", weights_only=True, map_location="cpu"))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.item_embedding.weight, model.item_embedding.weight.cpu())
    assert fresh.item_embedding.codes.device.type == "cpu"


@pytest.mark.parametrize("model_name", ["BPR", "LightGCN"])
def test_recbole_trains_one_epoch_on_cuda(model_name, recbole_env):
    from recbole.utils import get_trainer

    from .test_recbole_models import build

    config, model, train, valid, test = build(model_name, {**recbole_env, "epochs": 1, "jpq": True,
                                                            "use_gpu": True, "gpu_id": "0"})
    model = model.to(config["device"])
    assert type(model.item_embedding).__name__ == "JPQEmbedding" and model.item_embedding.codes.is_cuda
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.fit(train, valid, saved=False, show_progress=False)
    result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    assert result["recall@20"] > 0.02  # trained, not random (random ranking: ~0.01 on ml-100k)


def test_mmrec_freedom_trains_one_epoch_on_cuda(tmp_path):
    from .test_mmrec_e2e import MMREC_SRC, _launcher, _skip_reason

    if _skip_reason() is not None:
        pytest.skip(_skip_reason())
    data = os.environ.get("MMREC_DATA")
    if not data:
        pytest.skip("set MMREC_DATA to a folder of MMRec-format datasets holding tiktok/")
    done = _launcher("-m", "FREEDOM", "-d", "tiktok", f"--data_path={data}", "--jpq", "--epochs=1",
                     "--gpu_id=0", "--use_gpu=True", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cuda" in (done.stdout + done.stderr) and "JPQ swapped" in done.stdout + done.stderr
    assert MMREC_SRC


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from urecjpq_plugin.distributed import codes_digest, wrap_ddp

    from .test_ddp import _Scorer

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, init_method=f"tcp://localhost:{port}")
    try:
        torch.manual_seed(rank)
        model = _Scorer().cuda()
        ddp = wrap_ddp(model, device_ids=[rank])
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(3):
            users, items = torch.randint(0, 30, (16,), device="cuda"), torch.randint(0, 50, (16,), device="cuda")
            optimizer.zero_grad()
            ddp(users, items).square().mean().backward()
            optimizer.step()
        facts = {"sub": codes_digest(model.item_embedding.sub_embeddings.detach()), "synced": sorted(ddp.named_module_buffers)}
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(facts, fh)


def test_nccl_ddp(tmp_path):
    world = min(2, torch.cuda.device_count())
    mp.spawn(_nccl_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    facts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert len({f["sub"] for f in facts}) == 1 and all(f["synced"] == [] for f in facts)
