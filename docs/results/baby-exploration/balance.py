"""How evenly codes use the sub-ids: per split, the share of IDs on the most used sub-id (mean over
splits) and the normalised entropy of the sub-id histogram (1 = uniform), after the distinct-code repair.

    python balance.py ../../../../shared/datasets/baby/baby.inter ../../../../shared/datasets/tiktok/tiktok.inter
"""
import sys, numpy as np
sys.path.insert(0, '.'); sys.path.insert(0, '../../..')
from harness import load
import codes_exp

for data in sys.argv[1:]:
    tr, _, _ = load(data)
    for name in ['pqsvd64', 'upqsvd64', 'vpqsvd64', 'pqnsvd64']:
        uc, ic = codes_exp.make2(name, tr, 16, 256, 0, 64)
        for side, c in (('user', uc), ('item', ic)):
            c = c.long().numpy(); n = len(c)
            hist = [np.bincount(c[:, k], minlength=256) / n for k in range(c.shape[1])]
            maxshare = np.mean([h.max() for h in hist])
            ent = np.mean([-(h[h > 0] * np.log(h[h > 0])).sum() / np.log(256) for h in hist])
            print(data.split('/')[-1], name, side, f"largest sub-id share {maxshare:.3f} entropy {ent:.3f}", flush=True)
