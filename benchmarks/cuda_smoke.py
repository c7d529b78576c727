"""A few seconds' check that the plugin's training and scoring ops run on CUDA and match the CPU.

    python benchmarks/cuda_smoke.py      # prints one line per case; exit 1 if any case failed

Cases: uint8 codes (ksub <= 256) and uint16 codes (ksub > 256: torch's unsigned 16-bit type has
fewer CUDA kernels); forward with padding, backward, the decoded ``.weight``, ``score`` (full-sort
scoring), and the bench's ``torch.unique(codes, dim=0)``. Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import sys

import torch

from urecjpq_plugin.codes import random_codes
from urecjpq_plugin.jpq import JPQEmbedding


def check(ksub: int, device: str = "cuda", n: int = 5000, M: int = 8, d: int = 64) -> str:
    torch.manual_seed(0)
    cpu = JPQEmbedding(random_codes(n, M, ksub, 0), ksub, d, padding_idx=0)
    gpu = JPQEmbedding(cpu.codes.clone(), ksub, d, padding_idx=0)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to(device)
    ids = torch.randint(0, n, (4096,))
    queries = torch.randn(16, d)
    results = []
    for module, where in ((cpu, "cpu"), (gpu, device)):
        out = module(ids.to(where))
        (out.square().sum() + module.weight.sum()).backward()
        with torch.no_grad():
            scores = module.score(queries.to(where))
        distinct = torch.unique(module.codes.long(), dim=0).shape[0]
        results.append((out.detach().cpu(), module.sub_embeddings.grad.cpu(), scores.cpu(), distinct))
    if device == "cuda":
        torch.cuda.synchronize()
    for name, a, b in zip(("forward", "gradient", "scores"), results[0][:3], results[1][:3]):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            return f"FAILED: {name} differs from the CPU (max abs diff {(a - b).abs().max().item():.3g})"
    if results[0][3] != results[1][3]:
        return f"FAILED: distinct codes {results[1][3]} on CUDA, {results[0][3]} on the CPU"
    return "ok"


def main() -> int:
    if not torch.cuda.is_available():
        print("cuda smoke: no CUDA device; nothing checked")
        return 0
    failed = False
    for ksub in (256, 1024):
        try:
            verdict = check(ksub)
        except Exception as err:  # noqa: BLE001 (report every case, then the exit status)
            verdict = f"FAILED: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        failed |= verdict != "ok"
        dtype = str(JPQEmbedding(torch.zeros(1, 1, dtype=torch.long), ksub, 1).codes.dtype).replace("torch.", "")
        print(f"cuda smoke: ksub={ksub} ({dtype} codes): {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
