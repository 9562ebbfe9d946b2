"""Procedural drawings for the synthetic benchmark: greyscale modalities (CT, MRI,
X-ray, ultrasound, OCT). Colour modalities are in ``synthetic_draw_color``.

Every drawing works in fractions of the image side, so any size works; the
answer-determining feature (anatomy shape, lesion kind, size, position, count)
is large and high-contrast at 112 px, the nuisance variation (jitter, brightness,
noise) is small. ``Scene`` says what to draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass
class Scene:
    anatomy: str  # lower case, e.g. "head"
    finding: str = "normal"  # lower case disease / lesion key
    size: float = 0.12  # lesion radius, fraction of the image side
    loc: tuple[float, float] = (0.0, 0.0)  # lesion offset from the organ centre, fraction of the side
    color: str = "brown"
    count: int = 0


def ellipse(d, S, cx, cy, rx, ry=None, fill=None, outline=None, width=0.0):
    """An ellipse in fractional coordinates."""
    ry = rx if ry is None else ry
    w = max(1, round(width * S)) if outline is not None else 0
    d.ellipse([(cx - rx) * S, (cy - ry) * S, (cx + rx) * S, (cy + ry) * S], fill=fill, outline=outline, width=w)


def rect(d, S, x0, y0, x1, y1, fill, radius=0.0):
    """A (rounded) rectangle in fractional coordinates."""
    d.rounded_rectangle([x0 * S, y0 * S, x1 * S, y1 * S], radius=radius * S, fill=fill)


def polyline(d, S, pts, fill, width):
    """A polyline through fractional points, ``width`` a fraction of the side."""
    d.line([(x * S, y * S) for x, y in pts], fill=fill, width=max(1, round(width * S)), joint="curve")


def jitter(rng, amount=0.025):
    return 0.5 + rng.uniform(-amount, amount), 0.5 + rng.uniform(-amount, amount)


def finish(img: Image.Image, rng, noise=5.0, blur=0.5, gain=(0.9, 1.1)) -> Image.Image:
    """Brightness jitter, slight blur and Gaussian noise; returns RGB."""
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur * img.size[0] / 112))
    a = np.asarray(img, dtype=np.float32) * rng.uniform(*gain)
    a = a + rng.normal(0, noise, a.shape)
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    return out.convert("RGB")


# ---------------------------------------------------------------- CT
def draw_ct(rng, S, sc: Scene) -> Image.Image:
    im = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(im)
    cx, cy = jitter(rng)
    if sc.anatomy == "head":
        ellipse(d, S, cx, cy, 0.36, 0.42, fill=235)
        if sc.finding == "skull fracture":  # a wide gap through the bone ring
            a = rng.uniform(0, 2 * math.pi)
            polyline(d, S, [(cx, cy), (cx + 0.5 * math.cos(a), cy + 0.5 * math.sin(a))], fill=0, width=0.15)
        ellipse(d, S, cx, cy, 0.30, 0.36, fill=105)
        if sc.finding == "skull fracture":  # and a displaced bone fragment just inside
            ellipse(d, S, cx + 0.22 * math.cos(a + 0.5), cy + 0.26 * math.sin(a + 0.5), 0.05, 0.03, fill=235)
    elif sc.anatomy == "chest":
        ellipse(d, S, cx, cy, 0.46, 0.34, fill=95)
        for s in (-1, 1):
            ellipse(d, S, cx + s * 0.2, cy - 0.03, 0.15, 0.22, fill=15)
        ellipse(d, S, cx + 0.03, cy + 0.03, 0.1, 0.1, fill=130)
        ellipse(d, S, cx, cy + 0.25, 0.06, fill=240)
    else:  # abdomen
        ellipse(d, S, cx, cy, 0.44, 0.36, fill=100)
        ellipse(d, S, cx - 0.17, cy - 0.07, 0.18, 0.15, fill=140)
        for s in (-1, 1):
            ellipse(d, S, cx + s * 0.14, cy + 0.13, 0.05, 0.07, fill=170)
        ellipse(d, S, cx, cy + 0.23, 0.06, fill=240)
        ellipse(d, S, cx + 0.03, cy + 0.08, 0.03, fill=200)
    ox, oy = cx + sc.loc[0], cy + sc.loc[1]
    if sc.finding == "hemorrhage":
        ellipse(d, S, ox, oy, sc.size, sc.size * 0.85, fill=228)
    elif sc.finding == "cyst":
        ellipse(d, S, ox, oy, sc.size, fill=12, outline=215, width=0.02)
    return finish(im, rng)


# ---------------------------------------------------------------- MRI
def _wavy(cx, cy, rx, ry, lobes, amp, phase, n=90):
    return [(cx + rx * (1 + amp * math.sin(lobes * t + phase)) * math.cos(t),
             cy + ry * (1 + amp * math.sin(lobes * t + phase)) * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, n, endpoint=False)]


def draw_mri(rng, S, sc: Scene) -> Image.Image:
    im = Image.new("L", (S, S), 8)
    d = ImageDraw.Draw(im)
    cx, cy = jitter(rng)
    if sc.anatomy == "brain":
        ellipse(d, S, cx, cy, 0.41, 0.46, fill=200)  # scalp fat
        ellipse(d, S, cx, cy, 0.37, 0.42, fill=25)  # skull (dark on MRI)
        ph = rng.uniform(0, 6.3)
        d.polygon([(x * S, y * S) for x, y in _wavy(cx, cy, 0.33, 0.38, 11, 0.05, ph)], fill=115)
        d.polygon([(x * S, y * S) for x, y in _wavy(cx, cy, 0.24, 0.29, 9, 0.09, ph)], fill=190)
        vr = (0.065, 0.16) if sc.finding == "hydrocephalus" else (0.022, 0.08)
        for s in (-1, 1):
            ellipse(d, S, cx + s * (vr[0] + 0.012), cy - 0.01, vr[0], vr[1], fill=30)
        if sc.finding == "stroke":  # a large dark wedge reaching the cortex
            a = rng.uniform(0, 2 * math.pi)
            pts = [(cx + r * 0.34 * math.cos(t), cy + r * 0.39 * math.sin(t))
                   for r, ts in ((1.0, np.linspace(a, a + 1.2, 12)), (0.35, np.linspace(a + 1.2, a, 12))) for t in ts]
            d.polygon([(x * S, y * S) for x, y in pts], fill=55)
    elif sc.anatomy == "knee":
        ellipse(d, S, cx, cy, 0.33, 0.52, fill=85)
        rect(d, S, cx - 0.14, -0.1, cx + 0.14, cy - 0.05, fill=205, radius=0.1)
        rect(d, S, cx - 0.15, cy + 0.05, cx + 0.15, 1.1, fill=195, radius=0.04)
        ellipse(d, S, cx + 0.24, cy - 0.12, 0.05, 0.1, fill=190)
        rect(d, S, cx - 0.15, cy - 0.05, cx + 0.15, cy - 0.03, fill=140)
    else:  # spine, sagittal
        rect(d, S, cx - 0.36, 0, cx + 0.36, 1, fill=70)
        for k in range(5):
            y = 0.04 + k * 0.19
            rect(d, S, cx - 0.2, y, cx + 0.04, y + 0.14, fill=170, radius=0.02)
            rect(d, S, cx + 0.2, y + 0.03, cx + 0.32, y + 0.11, fill=150, radius=0.02)
        rect(d, S, cx + 0.07, 0, cx + 0.15, 1, fill=235)
        rect(d, S, cx + 0.095, 0, cx + 0.125, 1, fill=110)
    if sc.finding == "tumor":
        ox, oy = cx + sc.loc[0], cy + sc.loc[1]
        ellipse(d, S, ox, oy, sc.size, fill=252, outline=45, width=0.018)
    return finish(im, rng)


# ---------------------------------------------------------------- X-ray
def draw_xray(rng, S, sc: Scene) -> Image.Image:
    im = Image.new("L", (S, S), 12)
    d = ImageDraw.Draw(im)
    cx, cy = jitter(rng)
    if sc.anatomy == "chest":
        ellipse(d, S, cx, cy + 0.12, 0.47, 0.58, fill=145)
        for s in (-1, 1):
            ellipse(d, S, cx + s * 0.19, cy - 0.01, 0.15, 0.31, fill=45)
        rect(d, S, cx - 0.05, 0, cx + 0.05, 1, fill=195)
        hw = 0.25 if sc.finding == "cardiomegaly" else 0.12
        ellipse(d, S, cx + 0.04, cy + 0.16, hw, 0.13, fill=190)
        for s in (-1, 1):
            polyline(d, S, [(cx + s * 0.04, cy - 0.36), (cx + s * 0.3, cy - 0.41)], fill=200, width=0.025)
            for k in range(6):
                y0 = cy - 0.3 + k * 0.1
                polyline(d, S, [(cx + s * (0.04 + 0.32 * t), y0 + 0.07 * t * t) for t in np.linspace(0, 1, 8)],
                  fill=165, width=0.018)
        ox, oy = cx + sc.loc[0], cy + sc.loc[1]
        if sc.finding == "pneumonia":  # a soft white cloud filling the lower part of one lung
            mask = Image.new("L", (S, S), 0)
            ellipse(ImageDraw.Draw(mask), S, ox, oy, 0.13, 0.15, fill=255)
            mask = mask.filter(ImageFilter.GaussianBlur(0.03 * S))
            im = Image.composite(Image.new("L", (S, S), 215), im, mask)
        elif sc.finding == "nodule":
            ellipse(d, S, ox, oy, sc.size, fill=240)
    elif sc.anatomy == "hand":
        d.polygon([(x * S, y * S) for x, y in [(cx - 0.22, 1.0), (cx - 0.26, cy + 0.05), (cx - 0.2, cy - 0.35),
                                                (cx + 0.2, cy - 0.35), (cx + 0.3, cy), (cx + 0.18, 1.0)]], fill=95)
        for k, a in enumerate((-0.3, -0.12, 0.0, 0.12, 0.25)):
            x0 = cx - 0.14 + k * 0.07
            ln = 0.25 if k == 0 else 0.42
            pts = [(x0 + math.sin(a) * t, cy + 0.3 - math.cos(a) * t) for t in (0.0, 0.25 * ln / 0.42, ln)]
            polyline(d, S, pts, fill=225, width=0.04)
            if k == 0:
                polyline(d, S, [(cx - 0.14, cy + 0.3), (cx - 0.34, cy - 0.05)], fill=225, width=0.045)
        ellipse(d, S, cx - 0.02, cy + 0.38, 0.12, 0.06, fill=215)
    else:  # knee, AP
        rect(d, S, cx - 0.26, 0, cx + 0.26, 1, fill=105)
        rect(d, S, cx - 0.1, -0.1, cx + 0.1, cy - 0.08, fill=225)
        ellipse(d, S, cx, cy - 0.08, 0.18, 0.07, fill=230)
        rect(d, S, cx - 0.18, cy + 0.05, cx + 0.18, cy + 0.11, fill=225, radius=0.02)
        rect(d, S, cx - 0.11, cy + 0.05, cx + 0.11, 1.1, fill=220)
        rect(d, S, cx + 0.15, cy + 0.14, cx + 0.2, 1.1, fill=200)
    return finish(im, rng)


# ---------------------------------------------------------------- ultrasound
def draw_ultrasound(rng, S, sc: Scene) -> Image.Image:
    echo = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(echo)
    cx, cy = jitter(rng, 0.015)
    ax, ay, rad = cx, 0.04, 0.9
    d.pieslice([(ax - rad) * S, (ay - rad) * S, (ax + rad) * S, (ay + rad) * S], 50, 130, fill=115)
    if sc.anatomy == "heart":
        for sx, sy in ((-1, -1), (1, -1), (-1, 1), (1, 1)):
            ellipse(d, S, cx + sx * 0.1, cy + 0.05 + sy * 0.12, 0.075, 0.095, fill=8)
    elif sc.anatomy == "fetus":
        ellipse(d, S, cx, cy + 0.12, 0.3, 0.24, fill=8)
        ellipse(d, S, cx - 0.11, cy + 0.08, 0.1, fill=80, outline=250, width=0.025)
        ellipse(d, S, cx + 0.1, cy + 0.18, 0.14, 0.08, fill=140)
    else:  # liver
        for _ in range(3):
            ellipse(d, S, cx + rng.uniform(-0.2, 0.2), cy + rng.uniform(-0.05, 0.2), 0.025, fill=15)
        d.arc([(cx - 0.45) * S, (cy + 0.25) * S, (cx + 0.45) * S, (cy + 0.7) * S], 200, 340, fill=235,
              width=max(1, round(0.025 * S)))
    ox, oy = cx + sc.loc[0], cy + 0.05 + sc.loc[1]
    if sc.finding == "cyst":  # anechoic with posterior enhancement
        rect(d, S, ox - sc.size, oy, ox + sc.size, 1.0, fill=175)
        ellipse(d, S, ox, oy, sc.size, fill=0)
    elif sc.finding == "stone":  # bright echo casting an acoustic shadow
        rect(d, S, ox - sc.size * 0.7, oy, ox + sc.size * 0.7, 1.0, fill=0)
        ellipse(d, S, ox, oy, sc.size * 0.7, fill=255)
    elif sc.finding == "mass":
        ellipse(d, S, ox, oy, sc.size, fill=215, outline=20, width=0.02)
    fan = Image.new("L", (S, S), 0)
    ImageDraw.Draw(fan).pieslice([(ax - rad) * S, (ay - rad) * S, (ax + rad) * S, (ay + rad) * S], 50, 130, fill=255)
    e = np.asarray(echo.filter(ImageFilter.GaussianBlur(0.6 * S / 112)), dtype=np.float32)
    speckle = rng.rayleigh(0.8, (S, S)).astype(np.float32)
    speckle = np.asarray(Image.fromarray(np.clip(speckle * 90, 0, 255).astype(np.uint8))
                         .filter(ImageFilter.GaussianBlur(0.5 * S / 112)), dtype=np.float32) / 90
    depth = 1.1 - 0.35 * np.linspace(0, 1, S, dtype=np.float32)[:, None]
    a = e * speckle * depth * (np.asarray(fan, dtype=np.float32) / 255)
    return finish(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), rng, noise=2, blur=0)


# ---------------------------------------------------------------- OCT
def _bump(x, c, w):
    return np.exp(-(((x - c) / w) ** 2))


def draw_oct(rng, S, sc: Scene) -> Image.Image:
    x = (np.arange(S, dtype=np.float32) + 0.5) / S
    y = x[:, None]
    shift = rng.uniform(-0.03, 0.03)
    tilt = rng.uniform(-0.04, 0.04) * (x - 0.5)
    a = np.full((S, S), 10.0, dtype=np.float32)
    if sc.anatomy == "cornea":
        outer = 0.22 + shift + 1.3 * (x - 0.5) ** 2
        t = 0.1 + 0.5 * (x - 0.5) ** 2
        u = (y - outer) / t
        a = np.where((u >= 0) & (u < 1), 140.0, a)
        a = np.where((u >= 0) & (u < 0.12), 235.0, a)
        a = np.where((u >= 0.9) & (u < 1), 200.0, a)
    else:
        cxl = 0.5 + sc.loc[0]
        top = 0.34 + shift + tilt + 0.3 * (x - 0.5) ** 2
        rpe = 0.62 + shift + tilt + 0.3 * (x - 0.5) ** 2
        if sc.anatomy == "optic nerve head":
            top = top + 0.22 * _bump(x, 0.5, 0.1)
        else:
            top = top + 0.08 * _bump(x, 0.5, 0.06)
        if sc.finding == "macular edema":
            top = top - 2.2 * sc.size * _bump(x, cxl, 0.1 + sc.size)
        if sc.finding == "drusen":
            for c in (0.3, 0.45, 0.6, 0.72)[: 2 + int(rng.integers(0, 3))]:
                rpe = rpe - 0.06 * _bump(x, c + rng.uniform(-0.03, 0.03), 0.035)
        u = (y - top) / np.maximum(rpe - top, 1e-3)
        bands = [(0.0, 230), (0.12, 110), (0.3, 165), (0.42, 60), (0.55, 150), (0.62, 45), (0.9, 205)]
        inner = np.full_like(a, 10.0)
        for start, val in bands:
            inner = np.where(u >= start, float(val), inner)
        a = np.where((u >= 0) & (u < 1), inner, a)
        below = y - rpe
        a = np.where((below >= 0) & (below < 0.035), 250.0, a)
        a = np.where((below >= 0.035) & (below < 0.16), 135.0, a)
        a = np.where(below >= 0.16, 45.0, a)
        if sc.anatomy == "optic nerve head":
            a = np.where((np.abs(x - 0.5) < 0.06) & (below >= -0.02), 60.0, a)
        i = min(S - 1, max(0, int(cxl * S)))
        edema_at = (cxl, float(top[i] + rpe[i]) / 2)
        if sc.finding == "macular hole":
            a = np.where((np.abs(x - 0.5) < 0.06 + 0.04 * (y - 0.35)) & (u < 1) & (y > 0.25), 10.0, a)
    a = a * rng.gamma(5.0, 1 / 5.0, a.shape).astype(np.float32)
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if sc.finding == "macular edema" and sc.size > 0 and sc.anatomy != "cornea":
        ellipse(ImageDraw.Draw(im), S, edema_at[0], edema_at[1], sc.size * 1.3, sc.size * 0.9, fill=5)
    return finish(im, rng, noise=3, blur=0.4)
