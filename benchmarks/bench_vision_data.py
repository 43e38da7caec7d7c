"""Throughput of the spectrogram generator (mechheads.vision.data), side by side with two references.

* the obvious way to draw the same figure: matplotlib (imshow of the same noisy, blurred chirp, a
  title, axis labels and ticks, a colour bar) rendered to a 64x64 RGB array — without masks;
* what training consumes: images per second of one training step of the zoo ViT (forward +
  backward of ReferenceViT, batch 64), so the ratio says whether the generator bottlenecks training.

Prints images per second of each and the ratios (one process, one thread, same moment).

    python benchmarks/bench_vision_data.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mechheads.vision.data import spectrograms
from mechheads.vision.model import ReferenceViT, ViTConfig


def rate(fn, n_items: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n_items / best


def matplotlib_figures(n: int, seed: int = 0) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    out = np.empty((n, 64, 64, 3), dtype=np.float32)
    fig = plt.figure(figsize=(1, 1), dpi=64)
    for i in range(n):
        fig.clf()
        ax = fig.add_axes([0.25, 0.25, 0.55, 0.62])
        t = np.linspace(0, 1, 34)
        f = np.linspace(0, 1, 38)[:, None]
        t0, dur, f0, f1 = (
            rng.uniform(0, 0.4),
            rng.uniform(0.25, 0.6),
            rng.uniform(0.1, 0.9),
            rng.uniform(0.1, 0.9),
        )
        s = (t - t0) / dur
        ridge = np.exp(-0.5 * ((f - (f0 + (f1 - f0) * np.clip(s, 0, 1))) * 38) ** 2) * ((s >= 0) & (s <= 1))
        spec = 0.1 + ridge + rng.normal(0, 0.1, ridge.shape)
        im = ax.imshow(spec, origin="lower", extent=(0, 10, 0, 40), aspect="auto", cmap="inferno")
        ax.set_title("SPECTROGRAM", fontsize=4)
        ax.set_xlabel("TIME (S)", fontsize=3)
        ax.set_ylabel("FREQ (HZ)", fontsize=3)
        ax.tick_params(labelsize=3)
        fig.colorbar(im, ax=ax).ax.tick_params(labelsize=3)
        fig.canvas.draw()
        out[i] = np.asarray(fig.canvas.buffer_rgba())[:, :, :3] / 255.0
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000, help="images for the generator timing")
    args = p.parse_args()
    torch.set_num_threads(1)
    gen = rate(lambda: spectrograms(args.n, seed=0), args.n)
    n_mpl = max(20, args.n // 20)
    matplotlib_figures(3)  # warm up: font cache, backend import
    mpl = rate(lambda: matplotlib_figures(n_mpl), n_mpl, repeats=2)
    vit = ReferenceViT(ViTConfig())
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-3)
    images, targets = spectrograms(64, seed=1).tensors()

    def step():
        loss = (vit(images) - targets).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    train = rate(lambda: [step() for _ in range(5)], 5 * 64)
    print(f"generator (numpy, with 5 masks)     {gen:9.0f} images/s  ({gen * 60:,.0f} per minute, 1 core)")
    print(f"matplotlib figure (no masks)        {mpl:9.0f} images/s")
    print(f"ViT training step (fwd+bwd, b=64)   {train:9.0f} images/s")
    print(f"ratio generator / matplotlib        {gen / mpl:9.1f}x")
    print(f"ratio generator / training consumption {gen / train:6.1f}x")


if __name__ == "__main__":
    main()
