import subprocess, sys, json, concurrent.futures as cf, time, os
# each line: out.jsonl|name|shell command (run in baby-exploration)
jobs = [l.rstrip("\n").split("|", 2) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
W = int(sys.argv[2]) if len(sys.argv) > 2 else 2
cwd = __import__("os").path.dirname(__import__("os").path.abspath(__file__))
def go(t):
    out, name, cmd = t; t0 = time.time()
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1"})
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
    with open(out, "a") as f: f.write(json.dumps({"name": name, "secs": round(time.time() - t0), "cmd": cmd, "out": line}) + "\n")
with cf.ThreadPoolExecutor(W) as ex: list(ex.map(go, jobs))
