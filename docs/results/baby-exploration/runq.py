import os, subprocess, sys, json, concurrent.futures as cf
jobs = [l.strip().split("|") for l in open(sys.argv[1]) if l.strip()]
tasks = [(n, a, s) for n, a in jobs for s in (2020, 1, 2)]
def go(t):
    n, a, s = t
    out = subprocess.run(f"{sys.executable} harness.py {a} --seed {s} --epochs {os.environ.get('EP', '60')} --quiet", shell=True, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    with open(sys.argv[2], "a") as f: f.write(json.dumps({"name": n, "seed": s, "out": line}) + "\n")
with cf.ThreadPoolExecutor(2) as ex: list(ex.map(go, tasks))
