"""Exact planar polygon geometry for Push-T's score: coverage = area(block ∩ goal) / area(goal).

The T is the union of two convex parts (bar and stem) with disjoint interiors, so the intersection
area of two Ts is the sum of the 4 pairwise convex intersections, each clipped with
Sutherland-Hodgman.
"""

from __future__ import annotations

import numpy as np

# The original Push-T block in its own frame (pymunk `add_tee`, length 4, scale 30), CCW vertices.
T_PARTS: tuple[np.ndarray, ...] = (
    np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]]),   # bar
    np.array([[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]]),  # stem
)


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def place(parts: tuple[np.ndarray, ...], pose: np.ndarray) -> list[np.ndarray]:
    """Parts in the world for a pose (x, y, angle) of their frame."""
    r = rotation(float(pose[2]))
    return [p @ r.T + np.asarray(pose[:2], dtype=np.float64) for p in parts]


def polygon_area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: `subject` clipped by the convex CCW polygon `clip`."""
    out = [tuple(p) for p in subject]
    n = len(clip)
    for i in range(n):
        if not out:
            break
        a, b = clip[i], clip[(i + 1) % n]
        edge = b - a

        def inside(p: tuple[float, float]) -> bool:
            return edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) >= 0.0

        def cross_point(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
            d = np.subtract(q, p)
            denom = edge[0] * d[1] - edge[1] * d[0]
            t = (edge[1] * (p[0] - a[0]) - edge[0] * (p[1] - a[1])) / denom
            return (p[0] + t * d[0], p[1] + t * d[1])

        inp, out = out, []
        prev = inp[-1]
        for cur in inp:
            if inside(cur):
                if not inside(prev):
                    out.append(cross_point(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross_point(prev, cur))
            prev = cur
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def intersection_area(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Area of (union of a) ∩ (union of b) for parts with disjoint interiors within each list."""
    return sum(polygon_area(clip_convex(pa, pb)) for pa in a for pb in b)


def coverage(block_pose: np.ndarray, goal_pose: np.ndarray,
             parts: tuple[np.ndarray, ...] = T_PARTS) -> float:
    goal = place(parts, goal_pose)
    return intersection_area(place(parts, block_pose), goal) / sum(polygon_area(p) for p in goal)


def distance_to_parts(point: np.ndarray, parts: list[np.ndarray]) -> float:
    """Distance from a point to the union of convex polygons (0 inside)."""
    best = np.inf
    for poly in parts:
        edges = np.roll(poly, -1, axis=0) - poly
        rel = point - poly
        if np.all(edges[:, 0] * rel[:, 1] - edges[:, 1] * rel[:, 0] >= 0):
            return 0.0
        t = np.clip(np.sum(rel * edges, axis=1) / np.sum(edges * edges, axis=1), 0.0, 1.0)
        best = min(best, float(np.min(np.linalg.norm(rel - t[:, None] * edges, axis=1))))
    return best
