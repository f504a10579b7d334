"""Times the official ConverseNet models (PyTorch, CPU) on the benchmark's cases.

usage: python official_bench.py OFFICIAL_REPO WEIGHTS_DIR CASE [--warmup N] [--reps N]
CASE: dncnn256 | dncnn512 | sr128 | conversenet256 | usrnet256
Prints one JSON line: {"case", "ms_per_image", "times_ms"}. Peak RSS: run under /usr/bin/time -v.
"""
import argparse, json, sys, time
import torch

p = argparse.ArgumentParser()
p.add_argument("repo"); p.add_argument("weights"); p.add_argument("case")
p.add_argument("--warmup", type=int, default=0); p.add_argument("--reps", type=int, default=1)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
sys.path.insert(0, a.repo)
torch.set_num_threads(a.threads)
torch.manual_seed(0)

def load(m, name):
    m.load_state_dict(torch.load(f"{a.weights}/{name}.pth", map_location="cpu"), strict=True)
    return m.eval()

k = None
if a.case.startswith("dncnn"):
    from models.converse_dncnn import ConverseDnCNN
    m = load(ConverseDnCNN(in_channels=1, kernel_size=7, num_features=64, padding=6, padding_mode="circular"), "converse_dncnn")
    s = int(a.case[5:]); x = torch.rand(1, 1, s, s)
    run = lambda: m(x)
elif a.case == "sr128":
    from models.converse_srresnet import ConverseMSRResNet
    m = load(ConverseMSRResNet(3, 3, 64, 16, upscale=4), "converse_srresnet")
    x = torch.rand(1, 3, 128, 128); run = lambda: m(x)
elif a.case == "conversenet256":
    from models.converse_usrnet import ConverseNet
    m = load(ConverseNet(5, 64, 7), "conversenet")
    x = torch.rand(1, 3, 256, 256); run = lambda: m(x)
elif a.case == "usrnet256":
    from models.converse_usrnet import ConverseUSRNet
    m = load(ConverseUSRNet(5, 64, 7), "converse_usrnet")
    x = torch.rand(1, 3, 256, 256)
    k = torch.rand(1, 1, 7, 7); k = k / k.sum()
    run = lambda: m(x, k, 1)
else:
    sys.exit(f"unknown case {a.case}")

times = []
with torch.no_grad():
    for i in range(a.warmup + a.reps):
        t = time.perf_counter(); y = run(); dt = (time.perf_counter() - t) * 1e3
        if i >= a.warmup: times.append(dt)
times.sort()
print(json.dumps({"case": a.case, "ms_per_image": times[len(times) // 2], "times_ms": times}))
