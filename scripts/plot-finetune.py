"""Plots a `converse finetune --log FILE` CSV: the training loss (and its running mean) and the
validation PSNR against steps, as a PNG.

usage: python scripts/plot-finetune.py LOG.csv OUT.png [--title TEXT] [--ref NAME=DB ...]
  --ref draws a horizontal line per reference PSNR (e.g. "released=28.84" "JPEG input=27.65").
Needs matplotlib (pip install matplotlib).
"""
import argparse, csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

p = argparse.ArgumentParser()
p.add_argument("log")
p.add_argument("out")
p.add_argument("--title", default="converse finetune")
p.add_argument("--ref", action="append", default=[])
a = p.parse_args()

steps, losses, vsteps, vpsnr = [], [], [], []
with open(a.log) as f:
    for row in csv.DictReader(f):
        s = int(row["step"])
        if row["loss"]:
            steps.append(s)
            losses.append(float(row["loss"]))
        if row["val_psnr"]:
            vsteps.append(s)
            vpsnr.append(float(row["val_psnr"]))

# The mean over a window of up to 10 steps, centred: per-step losses vary with the patches.
mean = []
for i in range(len(losses)):
    w = losses[max(0, i - 5) : i + 5]
    mean.append(sum(w) / len(w))

fig, (l, r) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
l.plot(steps, losses, color="#9bb7d4", lw=0.6, label="L1 loss per step")
l.plot(steps, mean, color="#1f4e79", lw=1.6, label="mean over 10 steps")
l.set_xlabel("step")
l.set_ylabel("L1 loss")
l.legend()
l.grid(alpha=0.3)
r.plot(vsteps, vpsnr, "o-", color="#b5442b", ms=3, label="validation PSNR")
for ref in a.ref:
    name, db = ref.split("=")
    r.axhline(float(db), ls="--", lw=1, color="gray")
    r.annotate(f"{name} {float(db):.2f} dB", (vsteps[0] if vsteps else 0, float(db)),
               xytext=(4, 3), textcoords="offset points", fontsize=8, color="gray")
r.set_xlabel("step")
r.set_ylabel("PSNR (dB)")
r.legend(loc="center right")
r.grid(alpha=0.3)
fig.suptitle(a.title)
fig.tight_layout()
fig.savefig(a.out)
