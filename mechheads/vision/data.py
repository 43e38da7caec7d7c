"""Synthetic chirp spectrograms drawn as plotted figures, with pixel masks of every element.

Method (N. Bahador, "Mechanistic Interpretability of Fine-Tuned Vision Transformers on
Distorted Images", 2025): a ViT regresses the start time, start frequency and end frequency of one
linear or exponential chirp in a spectrogram that is rendered as a figure, with distractors that
carry no information about the targets — a title, axis tick numbers and labels, a colour bar and
the plot frame. Here every image also comes with a boolean pixel mask for the chirp and for each
distractor, so that what a head attends to can be measured, not only judged by eye.

Rendering uses numpy only (a 3×5 bitmap font and a colour map defined below; no plotting
library), and is seeded per image: image ``i`` of seed ``s`` is the same whatever ``n`` is.

Layout (pixels; the plot area grows with ``size``): title in rows 1–5; plot frame from row 8 to
``size - 17`` and from column 16 to ``size - 13``; x tick marks, numbers and the label in the
bottom 16 rows; the vertical y label (columns 0–4) and y tick numbers in the left 16 columns; the colour bar and
its two numbers in the right 12 columns. With ``size=64`` and 8-pixel patches the title fills
patch row 0, the x-axis text patch rows 6–7, the y-axis text patch columns 0–1 and the colour bar
patch column 7.

Example:
    >>> data = spectrograms(8, seed=0)
    >>> data.images.shape, data.targets.shape, sorted(data.masks)
    ((8, 3, 64, 64), (8, 3), ['axis_text', 'chirp', 'colorbar', 'frame', 'title'])
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float

from mechheads.errors import MechheadsError

TARGETS = ("start_time", "start_freq", "end_freq")
MASKS = ("chirp", "title", "axis_text", "colorbar", "frame")
TITLES = ("SPECTROGRAM", "CHIRP", "SIGNAL", "SWEEP", "STFT", "POWER", "CHIRP SCAN", "SENSOR 7")
X_LABEL, Y_LABEL = "TIME (S)", "FREQ (HZ)"
T_MAX = (2, 4, 6, 8, 10, 20)  # time-axis extents to choose from (tick numbers 0, T/2, T)
F_MAX = (4, 8, 10, 20, 40, 50, 80)  # frequency-axis extents

# Margins around the plot frame (pixels). Fixed: the font does not scale.
TOP, BOTTOM, LEFT, RIGHT = 8, 16, 16, 12
MIN_SIZE = 48

# 3x5 bitmap font: rows top to bottom, "1" = ink.
_GLYPHS = {
    "0": "111 101 101 101 111",
    "1": "010 110 010 010 111",
    "2": "111 001 111 100 111",
    "3": "111 001 111 001 111",
    "4": "101 101 111 001 001",
    "5": "111 100 111 001 111",
    "6": "111 100 111 101 111",
    "7": "111 001 001 010 010",
    "8": "111 101 111 101 111",
    "9": "111 101 111 001 111",
    "A": "010 101 111 101 101",
    "B": "110 101 110 101 110",
    "C": "011 100 100 100 011",
    "D": "110 101 101 101 110",
    "E": "111 100 110 100 111",
    "F": "111 100 110 100 100",
    "G": "011 100 101 101 011",
    "H": "101 101 111 101 101",
    "I": "111 010 010 010 111",
    "J": "001 001 001 101 010",
    "K": "101 101 110 101 101",
    "L": "100 100 100 100 111",
    "M": "101 111 111 101 101",
    "N": "110 101 101 101 101",
    "O": "010 101 101 101 010",
    "P": "110 101 110 100 100",
    "Q": "010 101 101 110 011",
    "R": "110 101 110 101 101",
    "S": "011 100 010 001 110",
    "T": "111 010 010 010 010",
    "U": "101 101 101 101 111",
    "V": "101 101 101 101 010",
    "W": "101 101 111 111 101",
    "X": "101 101 010 101 101",
    "Y": "101 101 010 010 010",
    "Z": "111 001 010 100 111",
    "(": "010 100 100 100 010",
    ")": "010 001 001 001 010",
    ".": "000 000 000 000 010",
    "-": "000 000 111 000 000",
    " ": "000 000 000 000 000",
}
FONT = {c: np.array([[ch == "1" for ch in row] for row in g.split()], dtype=bool) for c, g in _GLYPHS.items()}

# The colour map "ember": dark navy -> purple -> orange -> pale yellow, as (position, r, g, b).
_EMBER = np.array(
    [
        (0.00, 0.04, 0.03, 0.18),
        (0.35, 0.45, 0.10, 0.55),
        (0.65, 0.95, 0.45, 0.15),
        (1.00, 1.00, 0.96, 0.62),
    ]
)
LUT_SIZE = 256


def colormap(values: np.ndarray) -> Float[np.ndarray, "... 3"]:
    """The "ember" colour map: values in [0, 1] -> RGB in [0, 1] (256-entry lookup table)."""
    idx = np.clip(np.rint(np.asarray(values) * (LUT_SIZE - 1)), 0, LUT_SIZE - 1).astype(np.intp)
    return _LUT[idx]


_LUT = np.stack(
    [np.interp(np.linspace(0, 1, LUT_SIZE), _EMBER[:, 0], _EMBER[:, c]) for c in (1, 2, 3)], -1
).astype(np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def render_text(text: str) -> Bool[np.ndarray, "5 width"]:
    """A string in the 3×5 font (1-pixel spacing) as a boolean bitmap."""
    bad = sorted({c for c in text if c not in FONT})
    if bad:
        raise MechheadsError(
            f"the bitmap font has no glyph for {bad}; valid characters: {''.join(sorted(FONT))!r}"
        )
    if not text:
        return np.zeros((5, 0), dtype=bool)
    parts = []
    for i, c in enumerate(text):
        if i:
            parts.append(np.zeros((5, 1), dtype=bool))
        parts.append(FONT[c])
    return np.concatenate(parts, 1)


@dataclass(frozen=True)
class SpectrogramConfig:
    """Image size and the ranges every image's parameters are drawn from (uniformly).

    Frequencies and times are fractions of the plotted axes, so the targets lie in [0, 1].
    """

    size: int = 64
    channels: int = 3  # 3: RGB through the colour map; 1: its luminance
    duration: tuple[float, float] = (0.25, 0.7)
    freq: tuple[float, float] = (0.08, 0.92)
    p_exponential: float = 0.5
    amplitude: tuple[float, float] = (0.6, 1.0)
    width: tuple[float, float] = (0.7, 1.3)  # ridge half-width, pixels
    noise: tuple[float, float] = (0.03, 0.2)  # std of the Gaussian background noise
    floor: tuple[float, float] = (0.05, 0.2)  # background level
    blur: tuple[float, float] = (0.3, 1.0)  # Gaussian blur sigma, pixels
    distractors: bool = True  # False: a bare spectrogram filling the whole image (a control)

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < MIN_SIZE:
            raise MechheadsError(
                f"image size must be an integer >= {MIN_SIZE} (room for the axes), got {self.size!r}"
            )
        if self.channels not in (1, 3):
            raise MechheadsError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        for f in ("duration", "freq", "amplitude", "width", "noise", "floor", "blur"):
            lo, hi = getattr(self, f)
            if not (0 <= lo <= hi):
                raise MechheadsError(
                    f"SpectrogramConfig.{f} must be a range (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}"
                )
        if not (0 < self.duration[0] and self.duration[1] <= 1):
            raise MechheadsError(
                f"duration must lie in (0, 1] (fraction of the time axis), got {self.duration}"
            )
        if not (0 < self.freq[0] and self.freq[1] < 1):
            raise MechheadsError(f"freq must lie in (0, 1) (fraction of the frequency axis), got {self.freq}")
        if not 0 <= self.p_exponential <= 1:
            raise MechheadsError(f"p_exponential must be a probability, got {self.p_exponential}")

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """Rows and columns of the plot interior, (top, bottom, left, right), end-exclusive."""
        if not self.distractors:
            return 0, self.size, 0, self.size
        return TOP + 1, self.size - BOTTOM - 1, LEFT + 1, self.size - RIGHT - 1


@dataclass
class SpectrogramSet:
    """Images with their regression targets, pixel masks and the parameters they were drawn from.

    ``images``: [n, channels, size, size] float32 in [0, 1]; ``targets``: [n, 3] float32 (start time,
    start frequency, end frequency as fractions of the axes); ``masks``: name -> [n, size, size]
    booleans for ``chirp``, ``title``, ``axis_text``, ``colorbar`` and ``frame`` (the distractor masks
    are empty when ``config.distractors`` is False); ``params``: one row per image.
    """

    images: Float[np.ndarray, "n channel height width"]
    targets: Float[np.ndarray, "n 3"]
    masks: dict[str, Bool[np.ndarray, "n height width"]]
    params: pd.DataFrame
    config: SpectrogramConfig = field(default_factory=SpectrogramConfig)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, idx) -> SpectrogramSet:
        """Images ``idx`` (a slice, a list or an index array)."""
        idx = np.arange(len(self))[idx]
        return SpectrogramSet(
            self.images[idx],
            self.targets[idx],
            {k: v[idx] for k, v in self.masks.items()},
            self.params.iloc[idx].reset_index(drop=True),
            self.config,
        )

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, targets) as float tensors."""
        return torch.tensor(self.images, device=device), torch.tensor(self.targets, device=device)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """[n, n] Gaussian blur as a matrix (rows normalised: edges keep their brightness)."""
    if sigma <= 0:
        return np.eye(n, dtype=np.float32)
    d = np.arange(n)[:, None] - np.arange(n)[None]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    return (k / k.sum(1, keepdims=True)).astype(np.float32)


def chirp_frequency(s: np.ndarray, f0: float, f1: float, kind: str) -> np.ndarray:
    """Frequency at fraction ``s`` in [0, 1] of the chirp's duration (linear or exponential sweep)."""
    if kind == "linear":
        return f0 + (f1 - f0) * s
    if kind == "exponential":
        return f0 * (f1 / f0) ** s
    raise MechheadsError(f"chirp kind must be 'linear' or 'exponential', got {kind!r}")


def _draw_params(rng: np.random.Generator, cfg: SpectrogramConfig) -> dict:
    u = lambda r: float(rng.uniform(*r))  # noqa: E731
    duration = u(cfg.duration)
    return dict(
        start_time=float(rng.uniform(0, 1 - duration)),
        duration=duration,
        start_freq=u(cfg.freq),
        end_freq=u(cfg.freq),
        kind="exponential" if rng.random() < cfg.p_exponential else "linear",
        amplitude=u(cfg.amplitude),
        width=u(cfg.width),
        noise=u(cfg.noise),
        floor=u(cfg.floor),
        blur=u(cfg.blur),
        title=TITLES[rng.integers(len(TITLES))],
        t_max=int(T_MAX[rng.integers(len(T_MAX))]),
        f_max=int(F_MAX[rng.integers(len(F_MAX))]),
        c_max=int(rng.integers(1, 10)),
    )


def _ridge(p: dict, ph: int, pw: int, oversample: int = 4) -> np.ndarray:
    """Clean chirp ridge in [0, 1] over the plot interior [ph, pw] (row 0 = highest frequency)."""
    t = (np.arange(pw * oversample) + 0.5) / (pw * oversample)  # sub-column times
    s = (t - p["start_time"]) / p["duration"]
    inside = (s >= 0) & (s <= 1)
    f = chirp_frequency(np.clip(s, 0, 1), p["start_freq"], p["end_freq"], p["kind"])
    row_of_f = (1 - f) * ph - 0.5  # fractional row of the ridge centre
    rows = np.arange(ph)[:, None]
    r = np.exp(-0.5 * ((rows - row_of_f[None]) / p["width"]) ** 2) * inside[None]
    return r.reshape(ph, pw, oversample).max(-1)


def _paste(canvas_mask: np.ndarray, bitmap: np.ndarray, row: int, col: int) -> None:
    """OR a bitmap into a mask at (row, col), clipped to the canvas."""
    H, W = canvas_mask.shape
    h, w = bitmap.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, H), min(col + w, W)
    if r1 > r0 and c1 > c0:
        canvas_mask[r0:r1, c0:c1] |= bitmap[r0 - row : r1 - row, c0 - col : c1 - col]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _render_one(p: dict, cfg: SpectrogramConfig, rng: np.random.Generator):
    S = cfg.size
    top, bottom, left, right = cfg.plot_box
    ph, pw = bottom - top, right - left
    ridge = _ridge(p, ph, pw)
    spec = p["floor"] + p["amplitude"] * ridge + rng.normal(0, p["noise"], (ph, pw))
    spec = _gauss_matrix(ph, p["blur"]) @ spec @ _gauss_matrix(pw, p["blur"]).T
    rgb = np.ones((S, S, 3), dtype=np.float32)  # white figure background
    rgb[top:bottom, left:right] = colormap(np.clip(spec, 0, 1))
    masks = {k: np.zeros((S, S), dtype=bool) for k in MASKS}
    masks["chirp"][top:bottom, left:right] = ridge > 0.25
    if cfg.distractors:
        _draw_distractors(p, cfg, masks)
        c0 = S - RIGHT + 3  # colour bar: 3 columns wide, full plot height, its numbers to the right
        grad = colormap(np.linspace(1, 0, bottom - top + 2))[:, None, :]
        rgb[top - 1 : bottom + 1, c0 : c0 + 3] = grad
        masks["colorbar"][top - 1 : bottom + 1, c0 : c0 + 3] = True
        for text, row in ((str(p["c_max"]), top - 1), ("0", bottom - 4)):
            _paste(masks["colorbar"], render_text(text), row, c0 + 4)
        ink = masks["title"] | masks["axis_text"] | masks["frame"] | (masks["colorbar"] & ~_bar_region(cfg))
        rgb[ink] = 0.0
    img = rgb.transpose(2, 0, 1)
    if cfg.channels == 1:
        img = np.tensordot(_LUMA, img, axes=(0, 0))[None]
    return img.astype(np.float32), masks


def _bar_region(cfg: SpectrogramConfig) -> np.ndarray:
    top, bottom, _, _ = cfg.plot_box
    c0 = cfg.size - RIGHT + 3
    m = np.zeros((cfg.size, cfg.size), dtype=bool)
    m[top - 1 : bottom + 1, c0 : c0 + 3] = True
    return m


def _draw_distractors(p: dict, cfg: SpectrogramConfig, masks: dict[str, np.ndarray]) -> None:
    S = cfg.size
    top, bottom, left, right = cfg.plot_box
    fr = masks["frame"]
    fr[top - 1, left - 1 : right + 1] = fr[bottom, left - 1 : right + 1] = True
    fr[top - 1 : bottom + 1, left - 1] = fr[top - 1 : bottom + 1, right] = True
    title = render_text(p["title"])
    _paste(masks["title"], title, 1, (left + right - title.shape[1]) // 2)
    ax = masks["axis_text"]
    for frac in (0.0, 0.5, 1.0):
        # x axis: tick mark below the frame, number below it
        col = left + int(round(frac * (right - left - 1)))
        fr[bottom + 1 : bottom + 3, col] = True
        num = render_text(_number(frac * p["t_max"]))
        _paste(ax, num, bottom + 4, col - num.shape[1] // 2)
        # y axis: tick mark left of the frame, number right-aligned before it
        row = bottom - 1 - int(round(frac * (bottom - top - 1)))
        fr[row, left - 3 : left - 1] = True
        num = render_text(_number(frac * p["f_max"]))
        _paste(ax, num, row - 2, left - 4 - num.shape[1])
    xl = render_text(X_LABEL)
    _paste(ax, xl, S - 6, (left + right - xl.shape[1]) // 2)
    yl = np.rot90(render_text(Y_LABEL))  # reads bottom to top
    _paste(ax, yl, (top + bottom - yl.shape[0]) // 2, 0)


def spectrograms(
    n: int, seed: int = 0, config: SpectrogramConfig | None = None, *, start: int = 0, **overrides
) -> SpectrogramSet:
    """Generate ``n`` spectrogram figures; image ``i`` depends only on (``seed``, ``start + i``).

    Args:
        n: number of images.
        seed: random seed.
        config: image size and parameter ranges (default :class:`SpectrogramConfig`).
        start: index of the first image (``spectrograms(10, s, start=5)`` equals images 5..14 of
            ``spectrograms(15, s)``).
        **overrides: fields of :class:`SpectrogramConfig` to change, e.g. ``size=96, channels=1``.

    Returns:
        A :class:`SpectrogramSet`.

    Example:
        >>> data = spectrograms(4, seed=1, channels=1)
        >>> data.images.shape
        (4, 1, 64, 64)
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise MechheadsError(f"n must be a positive integer, got {n!r}")
    cfg = config or SpectrogramConfig()
    if overrides:
        known = {f.name for f in fields(SpectrogramConfig)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise MechheadsError(f"unknown SpectrogramConfig field(s) {bad}; valid: {sorted(known)}")
        cfg = SpectrogramConfig(**{**cfg.__dict__, **overrides})
    images = np.empty((n, cfg.channels, cfg.size, cfg.size), dtype=np.float32)
    masks = {k: np.empty((n, cfg.size, cfg.size), dtype=bool) for k in MASKS}
    rows = []
    for i in range(n):
        rng = np.random.default_rng([int(seed), int(start) + i])
        p = _draw_params(rng, cfg)
        images[i], m = _render_one(p, cfg, rng)
        for k in MASKS:
            masks[k][i] = m[k]
        rows.append(p)
    params = pd.DataFrame(rows)
    targets = params[list(TARGETS)].to_numpy(dtype=np.float32)
    return SpectrogramSet(images, targets, masks, params, cfg)


__all__ = [
    "MASKS",
    "TARGETS",
    "SpectrogramConfig",
    "SpectrogramSet",
    "chirp_frequency",
    "colormap",
    "render_text",
    "spectrograms",
]
