"""A small ESIM-style event simulator: a textured object moving over a textured background.

Every sequence is a function of its seed alone. The scene, rendered at ``dt_us`` steps, is a
smooth random texture (the background, panning slowly with a random velocity) and a textured
rectangle (the target) moving along a random smooth trajectory that bounces off the borders and
slowly changes size. Brightness ``I = texture`` in (0, 1]; each pixel keeps a reference log
intensity ``L_ref`` and fires, between two renders, ``n = floor(|L - L_ref| / C)`` events of the
sign of ``L - L_ref`` (times spread evenly inside the step; ``L_ref`` moves by ``n C``), with a
per-pixel contrast threshold ``C ~ N(threshold, threshold_sigma)`` (ESIM, Rebecq et al. 2018).
Shot noise adds uniformly random events at ``noise_rate`` per pixel per second.

``simulate(seed, ...)`` returns ``SyntheticSequence(events, boxes, times, sensor_size)``:
``boxes (K, 4)`` float ``[x, y, w, h]`` (top-left corner, OTB convention) of the target at the
frame times ``times (K,)`` µs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .io import make_events


class SyntheticSequence(NamedTuple):
    """``events (N,) EVENT_DTYPE``, ``boxes (K, 4) [x, y, w, h]``, ``times (K,)`` µs,
    ``sensor_size (W, H, 2)``."""

    events: np.ndarray
    boxes: np.ndarray
    times: np.ndarray
    sensor_size: tuple[int, int, int]


def smooth_texture(rng: np.random.Generator, h: int, w: int, scale: float,
                   lo: float = 0.1, hi: float = 1.0) -> np.ndarray:
    """Random smooth texture ``(h, w)`` in ``[lo, hi]``: white noise low-passed in Fourier
    space with a Gaussian of ``scale`` pixels, then stretched to the range."""
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    spec = np.fft.fft2(noise) * np.exp(-2 * (np.pi * scale) ** 2 * (fx ** 2 + fy ** 2))
    tex = np.real(np.fft.ifft2(spec))
    tex = (tex - tex.min()) / max(np.ptp(tex), 1e-9)
    return lo + (hi - lo) * tex


def _sample(tex: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``tex`` at float coordinates (wrapping around the borders)."""
    h, w = tex.shape
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    fy, fx = ys - y0, xs - x0
    y0, x0 = y0 % h, x0 % w
    y1, x1 = (y0 + 1) % h, (x0 + 1) % w
    return ((1 - fy) * (1 - fx) * tex[y0, x0] + (1 - fy) * fx * tex[y0, x1]
            + fy * (1 - fx) * tex[y1, x0] + fy * fx * tex[y1, x1])


def simulate(seed: int, width: int = 96, height: int = 96, num_frames: int = 40,
             frame_us: int = 10_000, dt_us: int = 1_000, threshold: float = 0.25,
             threshold_sigma: float = 0.03, noise_rate: float = 0.5,
             size_range: tuple[float, float] = (12.0, 22.0), speed: float = 60.0,
             background_speed: float = 10.0) -> SyntheticSequence:
    """Simulate one sequence (see the module docstring).

    Args:
        seed: the sequence's seed (everything is drawn from it).
        width, height: sensor size, default 96 x 96.
        num_frames: ground-truth boxes, one every ``frame_us`` µs (default 40 x 10 ms).
        dt_us: render step, default 1 ms.
        threshold, threshold_sigma: contrast threshold mean and per-pixel spread (log units).
        noise_rate: shot-noise events per pixel per second, default 0.5.
        size_range: initial target side range in pixels, default 12-22.
        speed: typical target speed in pixels per second (x frame rate), default 60 px / 0.1 s.
        background_speed: background pan speed, pixels per second x 0.1, default 10.

    Returns:
        ``SyntheticSequence``; events sorted by ``t``, the first frame at ``t = frame_us``.
    """
    rng = np.random.default_rng(seed)
    bg = smooth_texture(rng, 2 * height, 2 * width, scale=rng.uniform(2.0, 4.0), lo=0.15, hi=0.6)
    obj_tex = smooth_texture(rng, 64, 64, scale=rng.uniform(1.0, 2.0), lo=0.5, hi=1.0)
    # Target state: centre, size, velocity (pixels per frame), scale rate.
    w0 = rng.uniform(*size_range)
    h0 = w0 * rng.uniform(0.7, 1.4)
    cx, cy = rng.uniform(w0, width - w0), rng.uniform(h0, height - h0)
    ang = rng.uniform(0, 2 * np.pi)
    vel = np.array([np.cos(ang), np.sin(ang)]) * speed * rng.uniform(0.5, 1.5) / 10.0
    bg_vel = rng.standard_normal(2) * background_speed / 10.0
    steps_per_frame = frame_us // dt_us
    total_steps = (num_frames + 1) * steps_per_frame
    c_map = np.clip(rng.normal(threshold, threshold_sigma, (height, width)), 0.05, None)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    state = {"cx": cx, "cy": cy, "w": w0, "h": h0, "vel": vel, "bx": 0.0, "by": 0.0}

    def render() -> np.ndarray:
        img = _sample(bg, yy + state["by"], xx + state["bx"])
        x0, y0 = state["cx"] - state["w"] / 2, state["cy"] - state["h"] / 2
        u = (xx - x0) / state["w"]
        v = (yy - y0) / state["h"]
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        # The texture moves with the object (object-fixed coordinates).
        img[inside] = _sample(obj_tex, v[inside] * 63, u[inside] * 63)
        return np.log(img)

    def advance(frac: float) -> None:
        # Smooth random acceleration; bounce off the borders.
        state["vel"] = state["vel"] + rng.standard_normal(2) * 0.05 * frac * steps_per_frame
        spd = np.linalg.norm(state["vel"])
        cap = 2.0 * speed / 10.0
        if spd > cap:
            state["vel"] *= cap / spd
        state["cx"] += state["vel"][0] * frac
        state["cy"] += state["vel"][1] * frac
        for key, size, top, axis in (("cx", "w", width, 0), ("cy", "h", height, 1)):
            half = state[size] / 2
            if state[key] < half:
                state[key] = half
                state["vel"][axis] = abs(state["vel"][axis])
            elif state[key] > top - half:
                state[key] = top - half
                state["vel"][axis] = -abs(state["vel"][axis])
        grow = 1.0 + rng.normal(0.0, 0.004) * steps_per_frame * frac
        state["w"] = float(np.clip(state["w"] * grow, 8.0, width / 3))
        state["h"] = float(np.clip(state["h"] * grow, 8.0, height / 3))
        state["bx"] += bg_vel[0] * frac
        state["by"] += bg_vel[1] * frac

    l_ref = render()
    xs, ys, ts, ps = [], [], [], []
    boxes, times = [], []
    frac = 1.0 / steps_per_frame
    for step in range(1, total_steps + 1):
        advance(frac)
        cur = render()
        diff = cur - l_ref
        n = np.floor(np.abs(diff) / c_map).astype(np.int64)
        if n.any():
            iy, ix = np.nonzero(n)
            cnt = n[iy, ix]
            rep = np.repeat(np.arange(len(cnt)), cnt)
            k = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            # Crossing k of n lies at (k + 1) / (n + 1) of the step (linear interpolation).
            t = (step - 1) * dt_us + ((k + 1) * dt_us) // (cnt[rep] + 1)
            xs.append(ix[rep])
            ys.append(iy[rep])
            ts.append(t)
            ps.append((diff[iy, ix] > 0)[rep])
            l_ref[iy, ix] += np.sign(diff[iy, ix]) * cnt * c_map[iy, ix]
        if step % steps_per_frame == 0 and step // steps_per_frame >= 1 and \
                len(boxes) < num_frames:
            boxes.append([state["cx"] - state["w"] / 2, state["cy"] - state["h"] / 2,
                          state["w"], state["h"]])
            times.append(step * dt_us)
    duration = total_steps * dt_us
    n_noise = rng.poisson(noise_rate * width * height * duration * 1e-6)
    xs.append(rng.integers(0, width, n_noise))
    ys.append(rng.integers(0, height, n_noise))
    ts.append(rng.integers(0, duration, n_noise))
    ps.append(rng.integers(0, 2, n_noise).astype(bool))
    x, y, t, p = (np.concatenate(a) for a in (xs, ys, ts, ps))
    order = np.argsort(t, kind="stable")
    events = make_events(x[order], y[order], t[order], p[order])
    return SyntheticSequence(events, np.asarray(boxes, np.float64), np.asarray(times, np.int64),
                             (width, height, 2))


__all__ = ["SyntheticSequence", "simulate", "smooth_texture"]
