"""Embedded motion-forecasting data: kinematic-bicycle agents on generated lane graphs.

Writes exactly what a user of Argoverse 1 brings — one forecasting CSV per scene
(``TIMESTAMP, TRACK_ID, OBJECT_TYPE, X, Y, CITY_NAME``; 5 s at 10 Hz: 2 s observed, 3 s to
forecast) and a lane file in the JSON format of :mod:`vision.motion.data` — so one loader
reads both.

* **Maps.** Each city is a set of sites placed apart and rotated: straight two-way roads,
  curves and S-curves (curvature ramps, radii 25–140 m) and 3/4-arm intersections whose
  connectors (cubic Bézier curves) turn left, right or go straight. Lanes are cut into
  ~20 m segments with successors, like Argoverse's lane segments.
* **Agents.** 3–8 vehicles per scene follow a route through the lane graph (the turn at an
  intersection is drawn at random: the future is multi-modal). Each vehicle is a kinematic
  bicycle (rear-axle reference; Rajamani, *Vehicle Dynamics and Control*, 2012, Sec. 2.2;
  Kong et al., IV 2015)::

      dx/dt = v cos(psi),  dy/dt = v sin(psi),  dpsi/dt = v tan(delta) / L,  dv/dt = a

  integrated with one classical Runge-Kutta-4 step per 0.1 s frame, inputs held constant
  over the frame. Steering is pure pursuit on the route (Coulter, CMU-RI-TR-92-01, 1992),
  |delta| <= 0.6 rad; acceleration is the Intelligent Driver Model (Treiber, Hennecke and
  Helbing, Phys. Rev. E 62, 2000) towards a curvature-limited desired speed (lateral
  acceleration <= 2.5 m/s^2), behind same-direction leaders, and — for some vehicles —
  behind a stop line they wait at for a random time. Acceleration is clipped to
  [-6, a_max] m/s^2 and never makes the speed negative. Crossing traffic is not resolved
  (vehicles on crossing paths may pass through each other).
* **Recording.** 2 s of burn-in, then 50 frames. The focal ``AGENT`` is observed in every
  frame, the ``AV`` is another simulated vehicle, some ``OTHERS`` enter or leave the sensor
  range mid-scene (partial tracks, as in Argoverse). Positions get 2 cm of Gaussian noise.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed`` (the map from one
stream, each split from its own), so the files are identical on every machine; the whole
folder is built in a temporary sibling and renamed into place (atomic), with a
``manifest.json`` that makes a second call a no-op.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmllm.errors import DataError
from mmllm.jsonio import atomic_write_text, read_json

FORMAT_VERSION = 1
DT = 0.1  # s between frames (10 Hz)
OBS_LEN, PRED_LEN = 20, 30
SEQ_LEN = OBS_LEN + PRED_LEN
BURN_IN = 20  # frames simulated before the first recorded one
ROUTE_DS = 1.0  # m between the points of a route (controller reference)
LANE_DS = 2.0  # m between the centre-line points written to the lane file
LANE_SEGMENT = 20.0  # m, length of a lane segment in the lane file
HALF_LANE = 1.75  # m, lane centre to road axis
ROUTE_TAIL = 100.0  # m of straight road appended to a route past the map's edge
VEHICLE_LENGTH = 4.5  # m, bumper-to-bumper gap = distance between rear axles - this
REAR_TO_FRONT = 3.5  # m, rear axle to front bumper (stop-line gap)
MAX_STEER = 0.6  # rad
MAX_BRAKE = 6.0  # m/s^2
LAT_ACC = 2.5  # m/s^2, comfortable lateral acceleration on curves
AV_TRACK_ID = "00000000-0000-0000-0000-000000000000"
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 400}
SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}
CITIES = ("SIM_A", "SIM_B", "SIM_C")
SITES_PER_CITY = 8


# ---------------------------------------------------------------------------------- geometry
def _arc_length(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def resample(points: np.ndarray, spacing: float, exact_ends: bool = True) -> np.ndarray:
    """``points`` re-sampled at (about, if ``exact_ends``: the ends kept) equal arc-length steps."""
    s = _arc_length(points)
    if exact_ends:
        t = np.linspace(0.0, s[-1], max(int(math.ceil(s[-1] / spacing)), 1) + 1)
    else:
        t = np.arange(0.0, s[-1] + 1e-9, spacing)
    return np.stack([np.interp(t, s, points[:, 0]), np.interp(t, s, points[:, 1])], axis=1)


def _right_normal(d: np.ndarray) -> np.ndarray:
    return np.stack([d[..., 1], -d[..., 0]], axis=-1)


def _offset_right(points: np.ndarray, offset: float) -> np.ndarray:
    """A parallel polyline ``offset`` m to the right of the direction of travel."""
    tangent = np.gradient(points, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return points + offset * _right_normal(tangent)


def _axis_from_curvature(length: float, breaks: list[float], kappas: list[float], step: float = 0.5) -> np.ndarray:
    """A road axis from a piecewise-linear curvature profile kappa(s) (clothoid ramps), by integration."""
    s = np.arange(0.0, length + 1e-9, step)
    kappa = np.interp(s, breaks, kappas)
    psi = np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * step)])
    xy = np.zeros((len(s), 2))
    xy[1:, 0] = np.cumsum(0.5 * (np.cos(psi[1:]) + np.cos(psi[:-1])) * step)
    xy[1:, 1] = np.cumsum(0.5 * (np.sin(psi[1:]) + np.sin(psi[:-1])) * step)
    return xy - xy.mean(axis=0)


def _bezier(p0, p1, p2, p3, n: int = 80) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


# ---------------------------------------------------------------------------------- maps
@dataclass
class Chain:
    """One continuous lane of a site before it is cut into lane segments."""

    points: np.ndarray  # dense polyline (site coordinates, then city coordinates)
    is_intersection: bool = False
    turn_direction: str = "NONE"
    has_traffic_control: bool = False
    segment_ids: list[int] = field(default_factory=list)


@dataclass
class Route:
    """A path a vehicle can drive: chains in order, where it may start, its stop line and weight."""

    chains: list[int]
    entry: tuple[float, float]  # range of start arc lengths (m)
    stop_s: float  # arc length of the stop line (inf: none)
    weight: float
    turn: str = "NONE"
    points: np.ndarray | None = None  # city coordinates, ROUTE_DS spacing, tail included
    speed_limit: np.ndarray | None = None  # m/s per point (curvature + braking look-ahead)


@dataclass
class Site:
    kind: str
    chains: list[Chain]
    routes: list[Route]


def straight_site(rng: np.random.Generator) -> Site:
    length = rng.uniform(260.0, 320.0)
    axis = np.stack([np.arange(-length / 2, length / 2 + 1e-9, 0.5), np.zeros(int(length / 0.5) + 1)], axis=1)
    chains = [Chain(_offset_right(axis, HALF_LANE)), Chain(_offset_right(axis[::-1].copy(), HALF_LANE))]
    routes = [Route([i], (0.0, length / 2), math.inf, 1.0) for i in range(2)]
    return Site("straight", chains, routes)


def curve_site(rng: np.random.Generator) -> Site:
    """Straight, a curve (and for an S-curve a second one the other way), straight; 10 m clothoid ramps."""
    ramp, lead = 10.0, 100.0
    breaks, kappas, s = [0.0, lead], [0.0, 0.0], lead
    n_curves = 2 if rng.random() < 0.4 else 1
    sign = rng.choice([-1.0, 1.0])
    for _ in range(n_curves):
        radius = rng.uniform(25.0, 140.0)
        arc = radius * np.deg2rad(rng.uniform(30.0, 100.0 if n_curves == 1 else 60.0))
        breaks += [s + ramp, s + ramp + arc, s + 2 * ramp + arc]
        kappas += [sign / radius, sign / radius, 0.0]
        s += 2 * ramp + arc
        sign = -sign
    length = s + lead
    breaks.append(length)
    kappas.append(0.0)
    axis = _axis_from_curvature(length, breaks, kappas)
    chains = [Chain(_offset_right(axis, HALF_LANE)), Chain(_offset_right(axis[::-1].copy(), HALF_LANE))]
    routes = [Route([i], (0.0, lead), math.inf, 1.0) for i in range(2)]
    return Site("curve" if n_curves == 1 else "s_curve", chains, routes)


def intersection_site(rng: np.random.Generator, arms: int) -> Site:
    """3 or 4 arms at jittered right angles, one lane in and one out per arm (right-hand traffic),
    stop lines at the junction box, connectors for every turn but the U-turn."""
    angles = np.deg2rad([0.0, 90.0, 180.0, 270.0])
    if arms == 3:
        angles = np.delete(angles, rng.integers(4))
    angles = angles + rng.uniform(-0.2, 0.2, size=len(angles))
    box = rng.uniform(8.0, 12.0)
    arm = 100.0
    radii = np.arange(box, box + arm + 1e-9, 0.5)
    chains: list[Chain] = []
    inbound, outbound, units = [], [], []
    for a in angles:
        u = np.array([math.cos(a), math.sin(a)])
        units.append(u)
        inbound.append(len(chains))
        chains.append(Chain(radii[::-1, None] * u + HALF_LANE * _right_normal(-u), has_traffic_control=True))
        outbound.append(len(chains))
        chains.append(Chain(radii[:, None] * u + HALF_LANE * _right_normal(u)))
    routes = []
    for i, ui in enumerate(units):
        for j, uj in enumerate(units):
            if i == j:
                continue
            start, end = chains[inbound[i]].points[-1], chains[outbound[j]].points[0]
            d_in, d_out = -ui, uj
            reach = 0.4 * np.linalg.norm(end - start)
            pts = _bezier(start, start + reach * d_in, end - reach * d_out, end)
            turn_angle = math.atan2(d_in[0] * d_out[1] - d_in[1] * d_out[0], float(d_in @ d_out))
            turn = "NONE" if abs(turn_angle) < math.pi / 4 else ("LEFT" if turn_angle > 0 else "RIGHT")
            chains.append(Chain(pts, is_intersection=True, turn_direction=turn))
            routes.append(
                Route(
                    [inbound[i], len(chains) - 1, outbound[j]],
                    (0.0, arm - 5.0),
                    arm,
                    0.5 if turn == "NONE" else 0.25,
                    turn,
                )
            )
    return Site(f"intersection{arms}", chains, routes)


def make_site(rng: np.random.Generator) -> Site:
    u = rng.random()
    if u < 0.35:
        return intersection_site(rng, 4)
    if u < 0.55:
        return intersection_site(rng, 3)
    if u < 0.85:
        return curve_site(rng)
    return straight_site(rng)


def _speed_limit(points: np.ndarray, brake: float = 2.0) -> np.ndarray:
    """Curvature-limited speed (v^2 kappa <= LAT_ACC), lowered ahead of curves so that a vehicle
    braking at ``brake`` m/s^2 reaches each limit in time (backward pass)."""
    heading = np.unwrap(np.arctan2(*np.diff(points, axis=0).T[::-1]))
    kappa = np.abs(np.diff(heading)) / ROUTE_DS
    kappa = np.convolve(np.pad(kappa, (3, 3), mode="edge"), np.ones(5) / 5, mode="same")[3:-3]
    kappa = np.concatenate([[kappa[0]], kappa, [kappa[-1]]])
    limit = np.sqrt(LAT_ACC / np.maximum(kappa, 1e-4))
    for i in range(len(limit) - 2, -1, -1):
        limit[i] = min(limit[i], math.sqrt(limit[i + 1] ** 2 + 2 * brake * ROUTE_DS))
    return limit


@dataclass
class CityMap:
    name: str
    sites: list[Site]
    lanes: list[dict[str, Any]]  # the lane-file records


def build_city(name: str, rng: np.random.Generator, n_sites: int = SITES_PER_CITY) -> CityMap:
    """Sites rotated at random and placed 800 m apart (city coordinates in the thousands, as in Argoverse)."""
    origin = rng.uniform(1000.0, 5000.0, size=2)
    sites, lanes, next_id = [], [], 0
    for k in range(n_sites):
        site = make_site(rng)
        phi = rng.uniform(-math.pi, math.pi)
        rot = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
        offset = origin + np.array([800.0 * (k % 4), 800.0 * (k // 4)])
        for chain in site.chains:
            chain.points = chain.points @ rot.T + offset
            n_seg = max(int(round(_arc_length(chain.points)[-1] / LANE_SEGMENT)), 1)
            dense = resample(chain.points, 0.25)
            cuts = np.linspace(0, len(dense) - 1, n_seg + 1).round().astype(int)
            chain.segment_ids = []
            for a, b in zip(cuts[:-1], cuts[1:]):
                lanes.append(
                    {
                        "id": next_id,
                        "centerline": resample(dense[a : b + 1], LANE_DS),
                        "is_intersection": chain.is_intersection,
                        "turn_direction": chain.turn_direction,
                        "has_traffic_control": chain.has_traffic_control,
                        "successors": [],
                        "predecessors": [],
                    }
                )
                chain.segment_ids.append(next_id)
                next_id += 1
        by_id = {lane["id"]: lane for lane in lanes}
        links = {(c1, c2) for r in site.routes for c1, c2 in zip(r.chains[:-1], r.chains[1:])}
        for chain in site.chains:
            for a, b in zip(chain.segment_ids[:-1], chain.segment_ids[1:]):
                by_id[a]["successors"].append(b)
                by_id[b]["predecessors"].append(a)
        for c1, c2 in sorted(links):
            a, b = site.chains[c1].segment_ids[-1], site.chains[c2].segment_ids[0]
            by_id[a]["successors"].append(b)
            by_id[b]["predecessors"].append(a)
        for route in site.routes:
            path = np.concatenate(
                [site.chains[c].points if i == 0 else site.chains[c].points[1:] for i, c in enumerate(route.chains)]
            )
            direction = path[-1] - path[-2]
            direction /= np.linalg.norm(direction)
            tail = path[-1] + np.arange(1, int(ROUTE_TAIL) + 1)[:, None] * direction
            route.points = resample(np.concatenate([path, tail]), ROUTE_DS, exact_ends=False)
            route.speed_limit = _speed_limit(route.points)
        sites.append(site)
    return CityMap(name, sites, lanes)


def build_maps(seed: int) -> list[CityMap]:
    rng = np.random.default_rng([seed, 0])
    return [build_city(name, rng) for name in CITIES]


def lane_file_dict(maps: list[CityMap]) -> dict[str, Any]:
    """The lane file (format of :func:`vision.motion.data.read_lane_file`)."""
    return {
        "format": "mmllm-lanes",
        "version": 1,
        "cities": {
            m.name: [{**lane, "centerline": np.round(lane["centerline"], 3).tolist()} for lane in m.lanes] for m in maps
        },
    }


# ---------------------------------------------------------------------------------- scenes
@dataclass
class SceneBatch:
    """A chunk of simulated scenes, padded to ``A`` agents. ``states[..., k, :]`` = (x, y, psi, v)
    at recorded frame k; ``inputs[..., k, :]`` = (a, delta) held over frame k -> k+1."""

    city: list[str]
    alive: np.ndarray  # [S, A] bool
    states: np.ndarray  # [S, A, SEQ_LEN + 1, 4]
    inputs: np.ndarray  # [S, A, SEQ_LEN, 2]
    wheelbase: np.ndarray  # [S, A]
    observed: np.ndarray  # [S, A, SEQ_LEN] bool, frames written to the CSV
    turn: list[list[str]]  # route turn of each agent


def _route_table(maps: list[CityMap]):
    routes = [r for m in maps for site in m.sites for r in site.routes]
    length = max(len(r.points) for r in routes)
    pts = np.zeros((len(routes), length, 2))
    limit = np.zeros((len(routes), length))
    for i, r in enumerate(routes):
        n = len(r.points)
        pts[i, :n] = r.points
        step = r.points[-1] - r.points[-2]
        pts[i, n:] = r.points[-1] + np.arange(1, length - n + 1)[:, None] * step
        limit[i, :n] = r.speed_limit
        limit[i, n:] = r.speed_limit[-1]
    return routes, pts, limit


def _bicycle_rhs(state: np.ndarray, accel: np.ndarray, steer: np.ndarray, wheelbase: np.ndarray) -> np.ndarray:
    x, y, psi, v = np.moveaxis(state, -1, 0)
    return np.stack([v * np.cos(psi), v * np.sin(psi), v * np.tan(steer) / wheelbase, accel], axis=-1)


def rk4_step(
    state: np.ndarray, accel: np.ndarray, steer: np.ndarray, wheelbase: np.ndarray, dt: float = DT
) -> np.ndarray:
    """One classical Runge-Kutta-4 step of the kinematic bicycle with inputs held over ``dt``."""
    k1 = _bicycle_rhs(state, accel, steer, wheelbase)
    k2 = _bicycle_rhs(state + 0.5 * dt * k1, accel, steer, wheelbase)
    k3 = _bicycle_rhs(state + 0.5 * dt * k2, accel, steer, wheelbase)
    k4 = _bicycle_rhs(state + dt * k3, accel, steer, wheelbase)
    return state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def _idm_interaction(v, gap, dv, headway, a_max, b_comf, min_gap: float = 2.0):
    """IDM's interaction term (s*/s)^2, s* = s0 + max(0, v T + v dv / (2 sqrt(a b))) (Treiber et al., 2000)."""
    s_star = min_gap + np.maximum(v * headway + v * dv / (2.0 * np.sqrt(a_max * b_comf)), 0.0)
    return (s_star / gap) ** 2


def simulate_scenes(maps: list[CityMap], n_scenes: int, rng: np.random.Generator, max_agents: int = 8) -> SceneBatch:
    """``n_scenes`` scenes simulated together (every array op runs over all scenes and agents)."""
    routes, route_pts, route_limit = _route_table(maps)
    route_index = {id(r): i for i, r in enumerate(routes)}
    n_pts = route_pts.shape[1]
    S, A = n_scenes, max_agents
    alive = np.zeros((S, A), bool)
    rid = np.zeros((S, A), int)
    s = np.zeros((S, A))
    v = np.zeros((S, A))
    v_des = np.full((S, A), 10.0)
    a_max = np.full((S, A), 1.5)
    b_comf = np.full((S, A), 2.0)
    headway = np.full((S, A), 1.5)
    wheelbase = np.full((S, A), 2.8)
    release = np.zeros((S, A))  # sim time (s) until which a stop line holds the vehicle
    stop_s = np.full((S, A), math.inf)
    cities, turns = [], []
    for i in range(S):
        city = maps[rng.integers(len(maps))]
        site = city.sites[rng.integers(len(city.sites))]
        cities.append(city.name)
        weights = np.array([r.weight for r in site.routes])
        n_agents = int(rng.integers(3, A + 1))
        taken: list[tuple[int, float]] = []  # (first chain, start s) of agents placed so far
        scene_turns = []
        for j in range(n_agents):
            for _ in range(20):
                route = site.routes[rng.choice(len(site.routes), p=weights / weights.sum())]
                lo, hi = route.entry
                if j == 0 and math.isfinite(route.stop_s):  # the focal agent reaches the junction in the horizon
                    lo = max(lo, route.stop_s - 80.0)
                start = rng.uniform(lo, hi)
                if all(c != route.chains[0] or abs(start - s0) > 12.0 for c, s0 in taken):
                    break
            else:
                continue  # no free spot on any drawn route: one vehicle fewer
            k = len(scene_turns)
            taken.append((route.chains[0], start))
            scene_turns.append(route.turn)
            alive[i, k] = True
            rid[i, k] = route_index[id(route)]
            s[i, k] = start
            v_des[i, k] = rng.uniform(7.0, 14.0)
            v[i, k] = v_des[i, k] * rng.uniform(0.5, 1.0)
            a_max[i, k] = rng.uniform(1.0, 2.5)
            b_comf[i, k] = rng.uniform(1.5, 3.0)
            headway[i, k] = rng.uniform(1.0, 2.0)
            wheelbase[i, k] = rng.uniform(2.5, 3.1)
            if math.isfinite(route.stop_s) and rng.random() < 0.3:
                room = route.stop_s - start - REAR_TO_FRONT
                if room > v[i, k] ** 2 / (2 * 3.0) + 5.0:  # it can stop comfortably
                    stop_s[i, k] = route.stop_s
                    release[i, k] = rng.uniform(2.0, 7.0)
        turns.append(scene_turns)

    def at(arc: np.ndarray, table: np.ndarray) -> np.ndarray:
        idx = np.clip((arc / ROUTE_DS).astype(int), 0, n_pts - 2)
        frac = np.clip(arc / ROUTE_DS - idx, 0.0, 1.0)
        lo, hi = table[rid, idx], table[rid, idx + 1]
        return lo + (frac[..., None] if table.ndim == 3 else frac) * (hi - lo)

    pos = at(s, route_pts)
    idx0 = np.clip((s / ROUTE_DS).astype(int), 0, n_pts - 2)
    d = route_pts[rid, idx0 + 1] - route_pts[rid, idx0]
    state = np.stack([pos[..., 0], pos[..., 1], np.arctan2(d[..., 1], d[..., 0]), v], axis=-1)
    total = BURN_IN + SEQ_LEN
    states = np.zeros((S, A, SEQ_LEN + 1, 4))
    inputs = np.zeros((S, A, SEQ_LEN, 2))
    window = np.arange(-3, 12)
    for step in range(total + 1):
        if step >= BURN_IN:
            states[:, :, step - BURN_IN] = state
        if step == total:
            break
        x, y, psi, vel = np.moveaxis(state, -1, 0)
        # progress along the route: nearest route point in a window around the last one, then projected
        cand = np.clip((s / ROUTE_DS).astype(int)[..., None] + window, 0, n_pts - 2)
        pts = route_pts[rid[..., None], cand]
        d2 = ((pts - state[..., None, :2]) ** 2).sum(-1)
        near = np.take_along_axis(cand, d2.argmin(-1)[..., None], -1)[..., 0]
        p0, p1 = route_pts[rid, near], route_pts[rid, near + 1]
        seg = p1 - p0
        t = np.clip(((state[..., :2] - p0) * seg).sum(-1) / (seg**2).sum(-1), 0.0, 1.0)
        s = np.maximum(s, (near + t) * ROUTE_DS)
        # pure pursuit on the route
        look = np.clip(0.8 * vel + 4.0, 4.0, 20.0)
        target = at(s + look, route_pts)
        dx, dy = target[..., 0] - x, target[..., 1] - y
        alpha = np.arctan2(dy, dx) - psi
        steer = np.arctan2(2.0 * wheelbase * np.sin(alpha), np.maximum(np.hypot(dx, dy), 1.0))
        steer = np.clip(steer + 0.005 * rng.standard_normal((S, A)), -MAX_STEER, MAX_STEER)
        # IDM: free road towards the curvature-limited speed, same-direction leaders, stop lines
        desired = np.maximum(np.minimum(v_des, at(s, route_limit)), 0.5)
        free = 1.0 - (vel / desired) ** 4
        rel = state[:, None, :, :2] - state[:, :, None, :2]  # [S, i, j, 2]: j relative to i
        c, sn = np.cos(psi)[..., None], np.sin(psi)[..., None]
        ahead = rel[..., 0] * c + rel[..., 1] * sn
        lateral = -rel[..., 0] * sn + rel[..., 1] * c
        dpsi = np.angle(np.exp(1j * (psi[:, None, :] - psi[:, :, None])))
        leader = (
            alive[:, None, :]
            & alive[:, :, None]
            & ~np.eye(A, dtype=bool)
            & (ahead > 0)
            & (ahead < 60.0)
            & (np.abs(lateral) < 1.6)
            & (np.abs(dpsi) < 0.8)
        )
        gap = np.where(leader, ahead - VEHICLE_LENGTH, np.inf)
        lead = gap.argmin(-1)
        has_lead = np.isfinite(gap.min(-1))
        lead_gap = np.maximum(np.take_along_axis(gap, lead[..., None], -1)[..., 0], 0.1)
        lead_v = np.take_along_axis(vel[:, None, :] * np.cos(dpsi), lead[..., None], -1)[..., 0]
        follow = _idm_interaction(vel, lead_gap, vel - lead_v, headway, a_max, b_comf)
        accel = a_max * (free - np.where(has_lead, follow, 0.0))
        stop_gap = stop_s - s - REAR_TO_FRONT
        holding = (step * DT < release) & (stop_gap > -1.0)
        wait = _idm_interaction(vel, np.maximum(stop_gap, 0.1), vel, headway, a_max, b_comf)
        accel = np.where(holding, np.minimum(accel, a_max * (free - wait)), accel)
        accel = accel + 0.2 * rng.standard_normal((S, A))
        accel = np.clip(accel, -MAX_BRAKE, a_max)
        accel = np.maximum(accel, -vel / DT)  # never reverse within the frame
        if step >= BURN_IN:
            inputs[:, :, step - BURN_IN] = np.stack([accel, steer], axis=-1)
        state = rk4_step(state, accel, steer, wheelbase)
        state[..., 3] = np.maximum(state[..., 3], 0.0)  # exact zero instead of -1e-17
    observed = np.repeat(alive[..., None], SEQ_LEN, axis=-1)
    for i in range(S):  # some OTHERS enter or leave the sensor range mid-scene
        for k in range(2, A):
            if alive[i, k] and rng.random() < 0.3:
                if rng.random() < 0.5:
                    observed[i, k, : rng.integers(1, OBS_LEN)] = False
                else:
                    observed[i, k, rng.integers(OBS_LEN + 5, SEQ_LEN) :] = False
    return SceneBatch(cities, alive, states, inputs, wheelbase, observed, turns)


def scene_csv(batch: SceneBatch, i: int, t0: float, rng: np.random.Generator, noise: float = 0.02) -> str:
    """Scene ``i`` of ``batch`` as an Argoverse 1 forecasting CSV (rows in time order)."""
    kinds = ["AGENT", "AV"] + ["OTHERS"] * (batch.alive.shape[1] - 2)
    ids = ["00000000-0000-0000-0000-" + format(int(rng.integers(1, 16**12)), "012x") for _ in kinds]
    ids[1] = AV_TRACK_ID
    lines = ["TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME"]
    xy = batch.states[i, :, :SEQ_LEN, :2] + noise * rng.standard_normal(batch.states[i, :, :SEQ_LEN, :2].shape)
    for k in range(SEQ_LEN):
        stamp = f"{(round(t0 * 10) + k) / 10:.6f}"
        for a in range(batch.alive.shape[1]):
            if batch.alive[i, a] and batch.observed[i, a, k]:
                lines.append(f"{stamp},{ids[a]},{kinds[a]},{xy[a, k, 0]:.6f},{xy[a, k, 1]:.6f},{batch.city[i]}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- writing
def _params(sizes: dict[str, int], seed: int) -> dict[str, Any]:
    return {"generator": "vision.motion.simulate", "version": FORMAT_VERSION, "seed": seed, "sizes": dict(sizes)}


def write_dataset(root: str | Path, sizes: dict[str, int] | None = None, seed: int = 0, chunk: int = 256) -> Path:
    """Write ``root/lanes.json``, ``root/<split>/data/<n>.csv`` and ``root/manifest.json`` (idempotent, atomic).

    A folder already holding this exact dataset is left alone; one holding anything else is an
    error (nothing a user brought is ever overwritten or deleted).
    """
    root = Path(root)
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    params = _params(sizes, seed)
    manifest = root / "manifest.json"
    if manifest.is_file():
        found = read_json(manifest, "manifest")
        if found == params:
            return root
        raise DataError(
            f"{root} holds embedded motion data made with other settings ({found}, wanted {params}); "
            "delete it or choose another root"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root} exists and is not an embedded motion dataset (no manifest.json); choose an empty or new root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        tmp.mkdir()
        maps = build_maps(seed)
        atomic_write_text(tmp / "lanes.json", json.dumps(lane_file_dict(maps)))
        for split, n in sizes.items():
            rng = np.random.default_rng([seed, SPLIT_STREAMS.get(split, 10 + len(split))])
            folder = tmp / split / "data"
            folder.mkdir(parents=True)
            done = 0
            while done < n:
                batch = simulate_scenes(maps, min(chunk, n - done), rng)
                for i in range(len(batch.city)):
                    t0 = 315_970_000.0 + 10.0 * (done + i) + 1_000_000.0 * SPLIT_STREAMS.get(split, 9)
                    (folder / f"{done + i + 1}.csv").write_text(scene_csv(batch, i, t0, rng))
                done += len(batch.city)
        atomic_write_text(tmp / "manifest.json", json.dumps(params, indent=1, sort_keys=True))
        try:
            if root.is_dir():
                root.rmdir()  # empty (checked above)
            os.rename(tmp, root)
        except OSError:
            if not (manifest.is_file() and read_json(manifest, "manifest") == params):  # another process won
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def prepare_motion_sim(root: str) -> Path:
    """Registry preparer (``prepare: motion_sim``): the default-sized embedded dataset under ``root``."""
    return write_dataset(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="dataset folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    for split, n in DEFAULT_SIZES.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"scenes in {split} (default {n})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    write_dataset(args.out, {k: getattr(args, k) for k in DEFAULT_SIZES}, args.seed)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
