"""Procedural drawings for the synthetic benchmark: colour modalities (fundus
photography, dermoscopy, microscopy). See ``synthetic_draw`` for the conventions."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pipelines.data.synthetic_draw import Scene, ellipse, finish, jitter, polyline

DERM_COLORS = {"brown": (150, 95, 60), "black": (35, 28, 30), "red": (205, 40, 55), "blue": (70, 95, 175)}


def _vignette(im: Image.Image, cx, cy, r) -> Image.Image:
    S = im.size[0]
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) + 0.5) / S
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    shade = np.clip(1.15 - 0.45 * dist ** 2, 0, 1) * (dist <= 1)
    return Image.fromarray((np.asarray(im, dtype=np.float32) * shade[..., None]).astype(np.uint8))


def _spots(rng, n, cx, cy, spread, min_sep=0.0, tries=30):
    pts = []
    for _ in range(n):
        for _ in range(tries):
            a, r = rng.uniform(0, 2 * math.pi), spread * math.sqrt(rng.uniform(0, 1))
            p = (cx + r * math.cos(a), cy + r * math.sin(a))
            if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_sep ** 2 for q in pts):
                break
        pts.append(p)
    return pts


# ---------------------------------------------------------------- fundus photography
def draw_fundus(rng, S, sc: Scene) -> Image.Image:
    im = Image.new("RGB", (S, S), (0, 0, 0))
    d = ImageDraw.Draw(im)
    cx, cy = jitter(rng, 0.015)
    ellipse(d, S, cx, cy, 0.46, fill=(205, 80, 35))
    side = 1 if rng.uniform() < 0.5 else -1
    if sc.anatomy == "optic disc":
        disc, mac = (cx, cy), (cx + side * 0.28, cy)
    elif sc.anatomy == "macula":
        disc, mac = (cx + side * 0.28, cy), (cx, cy)
    else:  # periphery: neither disc nor macula, thin vessels only
        disc, mac = None, None
    vessel = (135, 25, 20)
    if disc is not None:
        for sy in (-1, 1):
            for spread in (0.6, 1.0):
                pts = [(disc[0] - side * 0.5 * t * (1 if sc.anatomy != "optic disc" else spread),
                        disc[1] + sy * (0.28 * spread) * math.sin(t * 2.2)) for t in np.linspace(0, 0.9, 10)]
                polyline(d, S, pts, fill=vessel, width=0.02)
    else:
        for _ in range(4):
            y0, a = rng.uniform(0.2, 0.8), rng.uniform(-0.3, 0.3)
            polyline(d, S, [(0.05 + t, y0 + a * t + 0.1 * math.sin(4 * t)) for t in np.linspace(0, 0.9, 10)],
              fill=vessel, width=0.012)
    if mac is not None:
        ellipse(d, S, mac[0], mac[1], 0.075, fill=(160, 55, 25))
        ellipse(d, S, mac[0], mac[1], 0.025, fill=(120, 35, 20))
    if disc is not None:
        big = sc.finding == "glaucoma"
        ellipse(d, S, disc[0], disc[1], 0.1 if big else 0.065, 0.11 if big else 0.075, fill=(245, 200, 120))
        ellipse(d, S, disc[0], disc[1], 0.085 if big else 0.028, fill=(255, 245, 215))
    if sc.finding == "diabetic retinopathy":
        for x, y in _spots(rng, sc.count, cx, cy, 0.36, min_sep=0.06):
            ellipse(d, S, x, y, 0.04, fill=(250, 235, 95))
        for x, y in _spots(rng, sc.count // 2, cx, cy, 0.36):
            ellipse(d, S, x, y, 0.018, fill=(110, 10, 10))
    elif sc.finding == "retinal vein occlusion":  # flame haemorrhages over one half
        sy = 1 if rng.uniform() < 0.5 else -1
        for _ in range(16):
            x, y = cx + rng.uniform(-0.3, 0.3), cy + sy * rng.uniform(0.05, 0.33)
            a = rng.uniform(0, math.pi)
            polyline(d, S, [(x, y), (x + 0.07 * math.cos(a), y + 0.07 * math.sin(a))], fill=(95, 8, 8), width=0.03)
    elif sc.finding == "hemorrhage":
        ellipse(d, S, cx + sc.loc[0], cy + sc.loc[1], sc.size, fill=(85, 5, 5))
    return finish(_vignette(im, cx, cy, 0.46), rng, noise=3, blur=0.6)


# ---------------------------------------------------------------- dermoscopy
def _blob(d, S, cx, cy, r, fill, irregular=0.0, rng=None):
    if irregular:
        n = 14
        radii = [r * rng.uniform(1 - irregular, 1 + irregular) for _ in range(n)]
        pts = [(cx + rr * math.cos(2 * math.pi * k / n), cy + rr * math.sin(2 * math.pi * k / n))
               for k, rr in enumerate(radii)]
        d.polygon([(x * S, y * S) for x, y in pts], fill=fill)
    else:
        ellipse(d, S, cx, cy, r, r * 0.92, fill=fill)


def draw_dermoscopy(rng, S, sc: Scene) -> Image.Image:
    base = tuple(int(c + rng.uniform(-12, 12)) for c in (225, 182, 152))
    im = Image.new("RGB", (S, S), base)
    d = ImageDraw.Draw(im)
    cx, cy = jitter(rng)
    darker = tuple(int(c * 0.82) for c in base)
    if sc.anatomy == "palm or sole":
        for k in range(-12, 13):
            x0 = 0.5 + k * 0.075
            polyline(d, S, [(x0 - 0.5, -0.05), (x0 + 0.5, 1.05)], fill=darker, width=0.02)
    elif sc.anatomy == "nail":
        d.rounded_rectangle([0.22 * S, 0.06 * S, 0.78 * S, 0.9 * S], radius=0.2 * S, fill=(238, 178, 180))
        ellipse(d, S, 0.5, 0.82, 0.2, 0.1, fill=(250, 235, 235))
        polyline(d, S, [(0.22, 0.9), (0.78, 0.9)], fill=darker, width=0.03)
    else:  # trunk: plain skin with a few hairs
        for _ in range(3):
            x, y, a = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0, math.pi)
            polyline(d, S, [(x + 0.3 * t * math.cos(a), y + 0.3 * t * math.sin(a) + 0.05 * t * t) for t in (0, .5, 1)],
              fill=(60, 40, 30), width=0.012)
    f = sc.finding
    if sc.anatomy == "nail" and f in ("nevus", "normal"):
        d.rectangle([(cx - 0.06) * S, 0.08 * S, (cx + 0.06) * S, 0.88 * S], fill=(140, 90, 60))
    elif sc.anatomy == "palm or sole" and f in ("nevus", "normal"):
        for k in range(-2, 3):
            x0 = cx + k * 0.075
            polyline(d, S, [(x0 - 0.12, cy - 0.24), (x0 + 0.12, cy + 0.24)], fill=(125, 75, 50), width=0.03)
    elif f == "melanoma":
        _blob(d, S, cx, cy, 0.27, (90, 55, 40), 0.35, rng)
        for col in ((35, 25, 30), (75, 85, 130), (35, 25, 30)):
            _blob(d, S, cx + rng.uniform(-0.1, 0.1), cy + rng.uniform(-0.1, 0.1), 0.1, col, 0.4, rng)
    elif f == "vascular lesion":
        for _ in range(5):
            ellipse(d, S, cx + rng.uniform(-0.1, 0.1), cy + rng.uniform(-0.1, 0.1), 0.08,
              fill=(175, 30, 60) if rng.uniform() < 0.6 else (120, 30, 90), outline=(235, 200, 200), width=0.01)
    elif f == "seborrheic keratosis":
        _blob(d, S, cx, cy, 0.22, (190, 155, 90))
        for x, y in _spots(rng, 8, cx, cy, 0.16):
            ellipse(d, S, x, y, 0.022, fill=(248, 244, 225))
        for _ in range(3):
            y = cy + rng.uniform(-0.12, 0.12)
            polyline(d, S, [(cx - 0.14, y), (cx, y + 0.03), (cx + 0.14, y)], fill=(120, 90, 50), width=0.015)
    elif f in ("nevus", "colored"):
        col = DERM_COLORS[sc.color] if f == "colored" else DERM_COLORS["brown"]
        _blob(d, S, cx, cy, sc.size, col)
        if f == "nevus":
            _blob(d, S, cx, cy, sc.size * 0.55, (120, 72, 45))
    # the dermoscope's round field of view
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) + 0.5) / S
    a = np.asarray(im, dtype=np.float32) * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) <= 0.49 ** 2)[..., None]
    return finish(Image.fromarray(a.astype(np.uint8)), rng, noise=3, blur=0.5)


# ---------------------------------------------------------------- microscopy
RBC, RBC_PALE, BLAST, NUCLEUS = (205, 85, 100), (228, 150, 160), (160, 120, 200), (90, 40, 135)


def draw_microscopy(rng, S, sc: Scene) -> Image.Image:
    bg = (240, 224, 228) if sc.anatomy == "blood" else (238, 200, 212)
    im = Image.new("RGB", (S, S), bg)
    d = ImageDraw.Draw(im)
    if sc.anatomy == "epithelial tissue":  # cobblestone sheet of polygonal cells
        step = 0.14
        for i in range(-1, 9):
            for j in range(-1, 9):
                x0 = i * step + (step / 2 if j % 2 else 0) + rng.uniform(-0.01, 0.01)
                y0 = j * step * 0.87 + rng.uniform(-0.01, 0.01)
                hexagon = [(x0 + 0.075 * math.cos(math.pi / 3 * k + math.pi / 6),
                            y0 + 0.075 * math.sin(math.pi / 3 * k + math.pi / 6)) for k in range(6)]
                d.polygon([(x * S, y * S) for x, y in hexagon], fill=(230, 160, 190), outline=(150, 80, 130))
                ellipse(d, S, x0, y0, 0.028, fill=NUCLEUS)
    elif sc.anatomy == "muscle tissue":  # long parallel fibres with elongated nuclei
        off = rng.uniform(0, 0.1)
        for k in range(9):
            y0 = off + k * 0.12 - 0.05
            d.rectangle([0, y0 * S, S, (y0 + 0.1) * S], fill=(215, 115, 140) if k % 2 else (225, 135, 155))
            for _ in range(2):
                ellipse(d, S, rng.uniform(0.05, 0.95), y0 + 0.05, 0.05, 0.014, fill=NUCLEUS)
    else:  # blood smear
        n = sc.count if sc.finding == "normal" and sc.count else 16
        r = 0.048 if n < 30 else 0.042
        for x, y in _spots(rng, n, 0.5, 0.5, 0.5, min_sep=2 * r if n < 30 else 0.0):
            if sc.finding == "sickle cell anemia":  # long curved bananas instead of round discs
                a = rng.uniform(0, 2 * math.pi)
                ux, uy = math.cos(a), math.sin(a)
                pts = [(x + 1.8 * r * t * ux - 0.8 * r * (1 - t * t) * uy, y + 1.8 * r * t * uy + 0.8 * r * (1 - t * t) * ux)
                       for t in np.linspace(-1, 1, 7)]
                polyline(d, S, pts, fill=RBC, width=0.05)
            else:
                ellipse(d, S, x, y, r, fill=RBC)
                ellipse(d, S, x, y, r * 0.4, fill=RBC_PALE)
        if sc.finding == "leukemia":
            for x, y in _spots(rng, sc.count, 0.5, 0.5, 0.4, min_sep=0.15):
                ellipse(d, S, x, y, 0.08, fill=BLAST)
                ellipse(d, S, x, y, 0.065, fill=NUCLEUS)
    return finish(im, rng, noise=3, blur=0.5)
