"""Runs our training steps (examples/train_bench.rs) and the official code's
(benches/official_train_bench.py) on this CPU, interleaved round by round, and prints one
Markdown table: the median ms per step of each side over every round's steps, their ratio, and each side's peak RSS (the
process's ru_maxrss, from wait4).

usage: python benches/train_vs_official.py OFFICIAL_REPO [--weights DIR] [--rounds N] [--reps N]
       [--ours BINARY] [--python PYTHON] [CASE ...]
CASE: op1 op2 dncnn (default: all). Build ours first:
  cargo build --release --example train_bench
(the binary is then target/release/examples/train_bench, or under $CARGO_TARGET_DIR).
"""
import argparse, json, os, subprocess, sys

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument("official")
p.add_argument("cases", nargs="*", default=["op1", "op2", "dncnn"])
p.add_argument("--weights", default=os.environ.get("CONVERSE_WEIGHTS", "../shared/weights"))
p.add_argument("--rounds", type=int, default=2)
p.add_argument("--reps", type=int, default=5)
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(here, "..", "target"))
p.add_argument("--ours", default=os.path.join(target, "release", "examples", "train_bench"))
p.add_argument("--python", default=sys.executable)
a = p.parse_intermixed_args()

WHAT = {
    "op1": "Converse2D fwd+bwd, 4x64x128x128, k3, scale 1, circular",
    "op2": "Converse2D fwd+bwd, 4x64x128x128, k3, scale 2, circular",
    "dncnn": "Converse-DnCNN step (fwd, L1, bwd, Adam), 8x1x64x64",
}


def run(cmd):
    """(the JSON line the command prints, its peak RSS in MiB)."""
    env = dict(os.environ, CONVERSE_WEIGHTS=a.weights)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


rows = []
for case in a.cases:
    ours, official = [], []
    for _ in range(a.rounds):
        ours.append(run([a.ours, case, str(a.reps)]))
        official.append(run([a.python, os.path.join(here, "official_train_bench.py"), a.official,
                             a.weights, case, "--reps", str(a.reps)]))
    def med(runs):
        times = sorted(t for r in runs for t in r[0]["times_ms"])
        return times[len(times) // 2]

    peak = lambda runs: max(r[1] for r in runs)
    o, t = med(ours), med(official)
    rows.append((case, o, t, t / o, peak(ours), peak(official)))

print("| case | ours ms/step | official ms/step | official / ours | ours peak RSS MiB | official peak RSS MiB |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for case, o, t, r, po, pt in rows:
    print(f"| {WHAT[case]} | {o:.1f} | {t:.1f} | {r:.1f}x | {po:.0f} | {pt:.0f} |")
