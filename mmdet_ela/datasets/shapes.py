"""The synthetic shapes task: filled shapes on textured backgrounds.

Each image has a textured background (gradients, stripes, smooth noise, soft
blobs, clutter lines, pixel noise) and 1-6 filled shapes of four classes.
Colours come from one palette shared by every class and by the backgrounds, and
objects may be filled with the same kind of texture as the background, so a
detector has to learn shape rather than colour.

Annotations are amodal: ``segmentation`` is the exact polygon that was drawn
(circles are drawn as 64-gons), ``bbox`` its bounding box and ``area`` its
polygon area. Objects may overlap, but at least half of every object's pixels
stay visible; objects that cannot be placed that way are dropped.

``writer.make_shapes_dataset`` writes the images and COCO files.
"""
from typing import List, Optional, Tuple

import cv2
import numpy as np

CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star')

#: Colours (RGB) shared by every class and by the backgrounds.
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (250, 190, 190),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (128, 128, 0),
    (0, 0, 128),
    (240, 240, 240),
    (128, 128, 128),
    (30, 30, 30),
    (200, 200, 120),
)

# Min RGB distance between an object's mean fill and what is under it.
_MIN_CONTRAST = 55.0
_MIN_VISIBLE = 0.5  # min visible fraction of every object
_MIN_SIZE = 12.0  # smallest object extent in pixels
# Shapes given by their outline (x, y), centred at 0, radius ~1.
_OUTLINES = {
    'plus': ((1, .3), (.3, .3), (.3, 1), (-.3, 1), (-.3, .3), (-1, .3),
             (-1, -.3), (-.3, -.3), (-.3, -1), (.3, -1), (.3, -.3), (1, -.3)),
    'arrow':
    ((1, 0), (0, .8), (0, .3), (-1, .3), (-1, -.3), (0, -.3), (0, -.8)),
}


def _unit_polygon(cls_name: str, rng: np.random.Generator) -> np.ndarray:
    """The vertices (N, 2) of a shape centred at 0, radius ~1, rotated."""
    if cls_name == 'circle':
        angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        radii = np.ones_like(angles)
    elif cls_name == 'square':
        angles = np.arange(4) * np.pi / 2
        radii = np.ones_like(angles)
    elif cls_name == 'triangle':
        angles = np.arange(3) * 2 * np.pi / 3
        radii = np.ones_like(angles)
    elif cls_name == 'star':
        angles = np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    elif cls_name == 'hexagon':
        angles = np.arange(6) * np.pi / 3
        radii = np.ones_like(angles)
    elif cls_name in _OUTLINES:
        xy = np.array(_OUTLINES[cls_name], np.float64)
        angles = np.arctan2(xy[:, 1], xy[:, 0])
        radii = np.hypot(xy[:, 0], xy[:, 1])
    else:
        raise ValueError(f'unknown shape class {cls_name!r}')
    angles = angles + rng.uniform(0, 2 * np.pi)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon given as (N, 2) vertices."""
    x, y = poly[:, 0], poly[:, 1]
    return float(
        abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _coverage(poly: np.ndarray, size: int, subrows: int = 8) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] (H, W) of a polygon (COCO coordinates).

    Pixel ``(c, r)`` is the square ``[c, c + 1) x [r, r + 1)``. Each pixel row
    is sampled on ``subrows`` horizontal lines; along each line the covered
    length per pixel is exact, so ``coverage.sum()`` is the polygon area up to
    sampling error (no outward bias, unlike ``cv2.fillPoly``).
    """
    out = np.zeros((size, size), np.float32)
    r0 = max(int(np.floor(poly[:, 1].min())), 0)
    r1 = min(int(np.ceil(poly[:, 1].max())), size)
    if r1 <= r0:
        return out
    ys = (r0 + (np.arange((r1 - r0) * subrows) + 0.5) / subrows)[:, None]
    a, b = poly, np.roll(poly, -1, axis=0)
    crosses = ((a[:, 1] <= ys) & (ys < b[:, 1])) | ((b[:, 1] <= ys) &
                                                    (ys < a[:, 1]))
    dy = np.where(b[:, 1] == a[:, 1], 1.0, b[:, 1] - a[:, 1])
    xs = a[:, 0] + (ys - a[:, 1]) / dy * (b[:, 0] - a[:, 0])
    xs = np.sort(np.where(crosses, xs, np.inf), axis=1)
    k = int(crosses.sum(1).max())
    k += k % 2
    # even-odd spans per line
    starts, ends = xs[:, 0:k:2, None], xs[:, 1:k:2, None]
    cols = np.arange(size, dtype=np.float64)
    with np.errstate(invalid='ignore'):
        lengths = np.minimum(ends, cols + 1) - np.maximum(starts, cols)
    lengths = np.clip(np.nan_to_num(lengths, nan=0.0), 0, 1).sum(axis=1)
    out[r0:r1] = lengths.reshape(r1 - r0, subrows, size).mean(axis=1)
    return np.clip(out, 0, 1)


def _pick_colour(rng: np.random.Generator,
                 choices: Optional[List[np.ndarray]] = None,
                 jitter: int = 18) -> np.ndarray:
    """A palette colour (or one of ``choices``) with a small random jitter."""
    if choices:
        base = choices[rng.integers(len(choices))]
    else:
        base = np.array(PALETTE[rng.integers(len(PALETTE))], np.float32)
    return np.clip(base + rng.integers(-jitter, jitter + 1, 3), 0,
                   255).astype(np.float32)


def _projection(size: int, rng: np.random.Generator) -> np.ndarray:
    """Coordinate along a random direction, (H, W) float, pixels."""
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - size / 2
    return xx * np.cos(theta) + yy * np.sin(theta)


def _gradient_field(size: int, rng: np.random.Generator) -> np.ndarray:
    """Linear ramp in [0, 1] along a random direction."""
    proj = _projection(size, rng)
    return (proj - proj.min()) / max(float(np.ptp(proj)), 1e-6)


def _stripe_field(size: int, rng: np.random.Generator,
                  period: Tuple[float, float]) -> np.ndarray:
    """Stripes in [0, 1] along a random direction, hard or soft."""
    proj = _projection(size, rng)
    t = 0.5 + 0.5 * np.sin(2 * np.pi * proj / rng.uniform(*period) +
                           rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.5:
        t = (t > 0.5).astype(np.float32)
    return t.astype(np.float32)


def _noise_field(size: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth value noise in [0, 1] (random grid upsampled bicubically)."""
    cells = int(rng.integers(3, 12))
    grid = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, 0, 1)


def _mix(c1: np.ndarray, c2: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend two colours with a (H, W) weight field into an (H, W, 3) image."""
    return c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]


def _background(
        size: int,
        rng: np.random.Generator) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Draw a textured background; return it (float RGB) and its colours."""
    c1, c2 = _pick_colour(rng), _pick_colour(rng)
    colours = [c1, c2]
    kind = rng.integers(4)
    if kind == 0:
        img = _mix(c1, c2, _gradient_field(size, rng))
    elif kind == 1:
        img = _mix(c1, c2, _stripe_field(size, rng, (size / 16, size / 3)))
    elif kind == 2:
        img = _mix(c1, c2, _noise_field(size, rng))
    else:
        img = _mix(c1, c2, 0.3 * _gradient_field(size, rng))
    # soft blobs of random colour
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 6))):
            colour = _pick_colour(rng)
            colours.append(colour)
            layer = np.zeros((size, size), np.float32)
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            axes = tuple(
                int(v) for v in rng.integers(size // 12 + 1, size // 3 + 2, 2))
            cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0,
                        360, 1.0, -1)
            sigma = max(axes) * rng.uniform(0.3, 0.8)
            layer = cv2.GaussianBlur(layer,
                                     (0, 0), sigma) * rng.uniform(0.5, 1.0)
            img = img * (
                1 - layer[..., None]) + colour[None, None] * layer[..., None]
    # clutter lines (thin anti-aliased bars)
    if rng.random() < 0.3:
        for _ in range(int(rng.integers(1, 5))):
            p1, p2 = rng.uniform(0, size, (2, 2))
            direction = (p2 - p1) / max(float(np.linalg.norm(p2 - p1)), 1e-6)
            normal = np.array([-direction[1], direction[0]]) * rng.uniform(
                0.5, 1.5)
            bar = np.stack(
                [p1 + normal, p2 + normal, p2 - normal, p1 - normal])
            alpha = _coverage(bar, size)[..., None]
            img = img * (1 - alpha) + _pick_colour(rng)[None, None] * alpha
    return img.astype(np.float32), colours


def _fill(size: int, rng: np.random.Generator,
          bg_colours: List[np.ndarray]) -> np.ndarray:
    """An (H, W, 3) fill for one object: solid, gradient, stripes or noise."""
    # about a third of the objects take a colour that is also in the background
    first = _pick_colour(rng, bg_colours if rng.random() < 0.35 else None)
    kind = rng.choice(4, p=[0.55, 0.15, 0.15, 0.15])
    if kind == 0:
        return np.broadcast_to(first, (size, size, 3))
    second = _pick_colour(rng)
    if kind == 1:
        field = _gradient_field(size, rng)
    elif kind == 2:
        field = _stripe_field(size, rng, (3.0, 9.0))
    else:
        field = _noise_field(size, rng)
    return _mix(first, second, field)


def _place(cls_name: str,
           size: int,
           rng: np.random.Generator,
           extent: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """A rotated, scaled polygon fully inside the image (COCO coordinates).

    Its extent is log-uniform in ``extent`` pixels (default: from
    ``_MIN_SIZE`` to half the image).
    """
    poly = _unit_polygon(cls_name, rng)
    unit_extent = float(np.max(np.ptp(poly, axis=0)))
    low, high = extent or (_MIN_SIZE, max(size / 2, _MIN_SIZE + 1))
    target = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    poly = poly * (target / unit_extent)
    poly = poly - poly.min(axis=0)
    span = poly.max(axis=0)
    offset = rng.uniform(1.0, np.maximum(size - 1.0 - span, 1.0))
    poly = poly + offset
    # the stored annotation is exactly the polygon that is drawn
    return np.round(poly, 2)


def object_record(category_id: int, poly: np.ndarray) -> dict:
    """An object dict: ``category_id``, ``polygon``, ``bbox``, ``area``."""
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return dict(
        category_id=category_id,
        polygon=poly,
        bbox=[float(x0), float(y0),
              float(x1 - x0),
              float(y1 - y0)],
        area=_polygon_area(poly))


class Canvas:
    """An image being drawn, with the pixels of its objects still visible.

    Each drawn shape keeps a minimum visible fraction: a later shape that
    would hide more of it is placed elsewhere.

    Args:
        size: Side of the square image in pixels.
        rng: The image's generator; draws a textured background.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.img, self.bg_colours = _background(size, rng)
        # visible pixels, pixel count when drawn, min visible fraction
        self.visible: List[np.ndarray] = []
        self.full_px: List[int] = []
        self.min_visible: List[float] = []

    def draw(self,
             shape: str,
             rng: np.random.Generator,
             min_visible: float = _MIN_VISIBLE,
             extent: Optional[Tuple[float, float]] = None,
             attempts: int = 25) -> Optional[np.ndarray]:
        """Draw ``shape`` on top; return its polygon, or None if it found no
        place that keeps every earlier shape visible enough and contrasts
        with what is under it.

        Args:
            shape: a shape name of ``_unit_polygon``.
            rng: the image's generator.
            min_visible: the fraction of *this* shape that must stay
                visible under the shapes drawn after it (0: none).
            extent: its size range in pixels (default: ``_place``'s).
            attempts: placements to try.
        """
        for _attempt in range(attempts):
            poly = _place(shape, self.size, rng, extent)
            alpha = _coverage(poly, self.size)
            inside = alpha > 0.5
            if not inside.any():
                continue
            if any((m & ~inside).sum() < f * n for m, n, f in zip(
                    self.visible, self.full_px, self.min_visible)):
                continue
            fill = _fill(self.size, rng, self.bg_colours)
            contrast = np.linalg.norm(fill[inside].mean(0) -
                                      self.img[inside].mean(0))
            if contrast < _MIN_CONTRAST:
                continue
            a = alpha[..., None]
            self.img = self.img * (1 - a) + fill * a
            self.visible = [m & ~inside for m in self.visible] + [inside]
            self.full_px.append(int(inside.sum()))
            self.min_visible.append(min_visible)
            return poly
        return None

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        """Add pixel noise; return the image as uint8 RGB (H, W, 3)."""
        img = self.img + rng.normal(0, rng.uniform(2, 10), self.img.shape)
        return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render_image(size: int,
                 rng: np.random.Generator) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image; return it (uint8 RGB, HxWx3) and its objects.

    Each object is a dict with ``category_id`` (1-based), ``polygon`` ((N, 2)
    float array in COCO pixel coordinates), ``bbox`` (xywh) and ``area``.
    """
    canvas = Canvas(size, rng)
    objects: List[dict] = []
    for _ in range(int(rng.integers(1, 7))):
        cls_idx = int(rng.integers(len(CLASSES)))
        poly = canvas.draw(CLASSES[cls_idx], rng)
        if poly is not None:
            objects.append(object_record(cls_idx + 1, poly))
    return canvas.finish(rng), objects
