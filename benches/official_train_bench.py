"""Times training steps of the official ConverseNet code (PyTorch autograd, CPU), the cases of
examples/train_bench.rs:

  op1, op2: Converse2D alone at scale 1 and 2 (64 channels, 128x128, batch 4, kernel 3,
            padding 2, circular), forward and backward of sum(y * g) to x, weight and bias;
  dncnn:    one training step of the released Converse-DnCNN (forward, L1 loss, backward,
            torch.optim.Adam), a batch of 8 gray 64x64 patches.

usage: python official_train_bench.py OFFICIAL_REPO WEIGHTS_DIR CASE [--reps N] [--threads N]
Prints one JSON line: {"case", "ms_per_step", "times_ms"} (the median of N steps after a
warm-up of up to 10 steps or 3 s, at least one, as examples/train_bench.rs). Peak RSS:
benches/train_vs_official.py reads it from the process.
"""
import argparse, json, sys, time
import torch

p = argparse.ArgumentParser()
p.add_argument("repo"); p.add_argument("weights"); p.add_argument("case")
p.add_argument("--reps", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
sys.path.insert(0, a.repo)
torch.set_num_threads(a.threads)
torch.manual_seed(0)

if a.case in ("op1", "op2"):
    from models.util_converse import Converse2D
    s = 1 if a.case == "op1" else 2
    op = Converse2D(64, 64, 3, scale=s, padding=2, padding_mode="circular")
    x = torch.randn(4, 64, 128, 128, requires_grad=True)
    g = torch.randn(4, 64, 128 * s, 128 * s)

    def step():
        for t in (x, op.weight, op.bias):
            t.grad = None
        (op(x) * g).sum().backward()
elif a.case == "dncnn":
    from models.converse_dncnn import ConverseDnCNN
    m = ConverseDnCNN(in_channels=1, kernel_size=7, num_features=64, padding=6, padding_mode="circular")
    m.load_state_dict(torch.load(f"{a.weights}/converse_dncnn.pth", map_location="cpu"), strict=True)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-4)
    clean = torch.rand(8, 1, 64, 64)
    noisy = clean + torch.randn_like(clean) * 25 / 255

    def step():
        opt.zero_grad()
        torch.nn.functional.l1_loss(m(noisy), clean).backward()
        opt.step()
else:
    sys.exit(f"unknown case {a.case}")

warm = time.perf_counter()
for _ in range(10):
    step()
    if time.perf_counter() - warm >= 3.0:
        break
times = []
for _ in range(a.reps):
    t = time.perf_counter(); step(); times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"case": a.case, "ms_per_step": times[len(times) // 2], "times_ms": times}))
