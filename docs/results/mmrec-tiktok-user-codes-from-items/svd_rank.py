"""Train an MMRec model compressed with the plugin defaults, but ``svd_pq_cos`` codes from an SVD of another rank
(``--rank``; the default is the table width, 64): ``rank / M`` components per split (a diagnosis, sixteenth round;
see README.md).

    OMP_NUM_THREADS=1 <MMRec venv python> svd_rank.py --model FREEDOM --rank 256 --mmrec-src <MMRec>/src \
        --data-path ../shared/datasets --seed 999 --out <scratch>

Prints one JSON line: the rank and the bench's run record.
"""
import argparse
import json

import torch

from urecjpq_plugin import assign
from run_args import add_run_arguments, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--rank", type=int, required=True)
    args = parser.parse_args()
    original = assign.svd_pq_codes
    assign.svd_pq_codes = lambda inter, M, ksub, seed, rank, **kw: original(inter, M, ksub, seed, args.rank, **kw)
    torch.set_num_threads(1)
    print(json.dumps({"rank": args.rank, "seed": args.seed, **run(args)}, default=str))


if __name__ == "__main__":
    main()
