"""Why the paper recipe at lr 0.01 never leaves chance on this network: watch its first 200 steps.

Usage (from the project root): python docs/results/paper/diagnose_start.py INPUTS LR [CLIP]
  INPUTS: normalised | pixels; LR: learning rate; CLIP: optional gradient max-norm.
Prints, every 20 steps, the batch loss and accuracy, the share of live (positive) ReLU
inputs after fc2 and conv5, and how much the logits differ between images.
"""

import sys

import torch
import torch.nn.functional as F

from alexpipe.model import build_model
from alexpipe.pipeline import load_split, make_loader
from alexpipe.train.inputs import feed
from alexpipe.train.recipes import get_recipe
from alexpipe.train.schedule import build_optimizer

torch.manual_seed(0)
inputs, lr = sys.argv[1], float(sys.argv[2])
clip = float(sys.argv[3]) if len(sys.argv) > 3 else None
r = get_recipe("paper").replace(lr=lr)
model = build_model(init="paper")
net = feed(model, inputs, load_split("data/cifar10", "train").meta.stats.std)
opt = build_optimizer(model, r)
loader = make_loader("data/cifar10", split="train", backend="resident", batch_size=128, device="cpu",
                     dtype=torch.float32, pca="paper", seed=0)
alive: dict[str, float] = {}
for name in ("fc2", "conv5"):
    getattr(model, name).register_forward_hook(
        lambda m, i, o, n=name: alive.__setitem__(n, (o > 0).float().mean().item()))
for step, (x, y) in enumerate(loader):
    out = net(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad()
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    if step % 20 == 0:
        print(f"{step} loss {loss.item():.4f} acc {(out.argmax(1) == y).float().mean():.3f} "
              f"alive fc2 {alive['fc2']:.3f} conv5 {alive['conv5']:.3f} logit spread {out.std(0).mean():.4f}",
              flush=True)
    if step >= 200:
        break
