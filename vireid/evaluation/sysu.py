"""SYSU-MM01 protocol: all/indoor search, single/multi-shot, gallery trials, two samplers.

Queries are every image of the infrared cameras 3 and 6 of the test identities. Each trial
draws a gallery from the pool of visible images (cameras 1, 2, 4, 5; indoor: 1, 2):

- ``community`` (the AGW family, what most papers report). Single-shot: Python
  ``random.seed(trial)``, then for each test identity in ascending order (as 4-digit
  strings) and each gallery camera in order, ``random.choice`` over that folder's sorted
  file list if the folder exists. Multi-shot (the community ``gall_mode="multi"``
  variant): ``numpy.random.seed(trial)``, then ``numpy.random.choice(sorted files, 10,
  replace=False)`` per folder. Private generators seeded the same way are used, so the
  global ``random``/``numpy.random`` states are untouched.
- ``official`` (the dataset owners' kit, ``rand_perm_cam.mat``): row ``trial`` of the
  ``10 x N`` matrix of (camera, identity) is a 1-based permutation of the folder's sorted
  files; the first 1 (single) or 10 (multi) entries are the gallery.

Features are extracted once per image (query list and gallery pool) and reused by every
trial; distances are the reference's ``-(q @ g.T)`` in float64, with the camera-3/camera-2
removal rule (see :mod:`vireid.evaluation.metrics`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vireid.data.sample import Sample
from vireid.data.sysu import INFRARED_CAMERAS, VISIBLE_CAMERAS
from vireid.evaluation.metrics import (
    RankingResult,
    evaluate_features,
    evaluate_ranking,
    summarize_trials,
)

Mode = Literal["all", "indoor"]
Shot = Literal["single", "multi"]
SamplerName = Literal["community", "official"]

#: Visible cameras the gallery is drawn from, in the reference's order.
SYSU_GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {"all": VISIBLE_CAMERAS, "indoor": (1, 2)}
#: Infrared cameras of the queries.
SYSU_QUERY_CAMERAS: tuple[int, ...] = INFRARED_CAMERAS
#: Gallery images per (identity, camera) folder.
SYSU_SHOT_SIZE: dict[str, int] = {"single": 1, "multi": 10}
#: Number of gallery trials of the protocol (seeds 0..9).
SYSU_TRIALS = 10


class GallerySamplingError(ValueError):
    """The gallery cannot be drawn as the protocol specifies; the message names the folder."""


def _check_mode_shot(mode: str, shot: str) -> None:
    if mode not in SYSU_GALLERY_CAMERAS:
        raise ValueError(f"unknown SYSU mode {mode!r} (expected one of {sorted(SYSU_GALLERY_CAMERAS)})")
    if shot not in SYSU_SHOT_SIZE:
        raise ValueError(f"unknown SYSU shot {shot!r} (expected one of {sorted(SYSU_SHOT_SIZE)})")


def gallery_folders(pool: Sequence[Sample], mode: str) -> list[tuple[int, int, list[int]]]:
    """``(identity, camera, pool indices sorted by file path)`` in the samplers' visiting order.

    Identities ascend as 4-digit strings, cameras follow :data:`SYSU_GALLERY_CAMERAS`.
    """
    cameras = SYSU_GALLERY_CAMERAS[mode]
    folders: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(pool):
        if s.camera in cameras:
            folders.setdefault((s.identity, s.camera), []).append(i)
    out = []
    for identity in sorted({k[0] for k in folders}, key=lambda v: f"{v:04d}"):
        for cam in cameras:
            members = folders.get((identity, cam))
            if members:
                out.append((identity, cam, sorted(members, key=lambda j: pool[j].path)))
    return out


def community_gallery(pool: Sequence[Sample], mode: str, shot: str, trial: int) -> np.ndarray:
    """Pool indices the community (AGW) sampler draws for ``trial``, in drawing order."""
    _check_mode_shot(mode, shot)
    picks: list[int] = []
    if shot == "single":
        rng = random.Random(trial)  # == random.seed(trial) on the global generator
        for _, _, files in gallery_folders(pool, mode):
            picks.append(rng.choice(files))
    else:
        nrng = np.random.RandomState(trial)  # == numpy.random.seed(trial)
        k = SYSU_SHOT_SIZE[shot]
        for identity, cam, files in gallery_folders(pool, mode):
            if len(files) < k:
                raise GallerySamplingError(
                    f"cam{cam}/{identity:04d}: multi-shot needs at least {k} images per folder, "
                    f"found {len(files)}")
            chosen = nrng.choice(len(files), k, replace=False)
            picks.extend(files[int(j)] for j in chosen)
    return np.asarray(picks, dtype=np.int64)


@dataclass(frozen=True)
class OfficialPermutations:
    """``rand_perm_cam.mat``: ``(camera, identity) -> [10, N]`` 1-based permutations."""

    perms: Mapping[tuple[int, int], np.ndarray]
    source: str = "rand_perm_cam.mat"  # the file read (named by every error about it)

    @classmethod
    def from_mat(cls, path: str | os.PathLike[str]) -> OfficialPermutations:
        """Read the owners' ``rand_perm_cam.mat`` (key ``rand_perm_cam``, 6 x 1 cell); every
        row must be a 1-based permutation of its folder's images."""
        import scipy.io

        source = os.fspath(path)
        if not os.path.isfile(source):  # scipy would try "<path>.mat" and name that
            raise GallerySamplingError(f"{source}: no such file (eval.official_perm_path)")
        try:
            cells = scipy.io.loadmat(source)["rand_perm_cam"]
        except KeyError:
            raise GallerySamplingError(f"{source}: no rand_perm_cam variable (not SYSU-MM01's "
                                       "rand_perm_cam.mat)") from None
        except Exception as exc:  # scipy's MatReadError, NotImplementedError (v7.3 files), OSError...
            raise GallerySamplingError(f"{source}: not a readable MAT file ({exc})") from exc
        perms: dict[tuple[int, int], np.ndarray] = {}
        for c in range(cells.shape[0]):
            entries = np.asarray(cells[c, 0]).ravel()
            for i, entry in enumerate(entries):
                arr = np.asarray(entry)
                if not arr.size:
                    continue
                arr = np.atleast_2d(arr.astype(np.int64))
                n = arr.shape[1]
                ok = (np.sort(arr, axis=1) == np.arange(1, n + 1)).all()
                if not ok:
                    raise GallerySamplingError(
                        f"{source}: cam{c + 1}/{i + 1:04d}: rows must be permutations of 1..{n} "
                        "(1-based, as in the owners' file)")
                perms[(c + 1, i + 1)] = arr
        return cls(perms, source)


def load_official_permutations(path: str | os.PathLike[str]) -> OfficialPermutations:
    """Load ``rand_perm_cam.mat`` from the path given (the official sampler's input)."""
    return OfficialPermutations.from_mat(path)


def official_gallery(
    pool: Sequence[Sample], mode: str, shot: str, trial: int, perms: OfficialPermutations
) -> np.ndarray:
    """Pool indices the official sampler takes for ``trial`` (first 1 or 10 of row ``trial``)."""
    _check_mode_shot(mode, shot)
    k = SYSU_SHOT_SIZE[shot]
    picks: list[int] = []
    for identity, cam, files in gallery_folders(pool, mode):
        where = f"{perms.source}: cam{cam}/{identity:04d}"
        perm = perms.perms.get((cam, identity))
        if perm is None:
            raise GallerySamplingError(f"{where}: no permutation for this folder")
        if perm.ndim != 2 or not 0 <= trial < perm.shape[0]:
            raise GallerySamplingError(f"{where}: permutation of shape {perm.shape} has no row {trial}")
        if perm.shape[1] != len(files):
            raise GallerySamplingError(
                f"{where}: permutes {perm.shape[1]} images, the folder has "
                f"{len(files)} (not the official SYSU-MM01 tree?)")
        if len(files) < k:
            raise GallerySamplingError(f"{where}: {shot}-shot needs {k} images, found {len(files)}")
        picks.extend(files[int(j) - 1] for j in perm[trial, :k])
    return np.asarray(picks, dtype=np.int64)


def sample_gallery(
    pool: Sequence[Sample],
    mode: str,
    shot: str,
    trial: int,
    sampler: str = "community",
    perms: OfficialPermutations | None = None,
) -> np.ndarray:
    """Dispatch to the named sampler; ``official`` needs ``perms``."""
    if sampler == "community":
        return community_gallery(pool, mode, shot, trial)
    if sampler == "official":
        if perms is None:
            raise ValueError("the official SYSU sampler needs rand_perm_cam.mat (eval.official_perm_path)")
        return official_gallery(pool, mode, shot, trial, perms)
    raise ValueError(f"unknown SYSU gallery sampler {sampler!r} (expected 'community' or 'official')")


@dataclass(frozen=True)
class TrialResult:
    """One gallery trial: the pool indices drawn and the metrics obtained."""

    trial: int
    gallery: np.ndarray
    result: RankingResult


@dataclass(frozen=True)
class ProtocolResult:
    """All trials of one SYSU (mode, shot) with the sampler that drew the galleries."""

    mode: str
    shot: str
    sampler: str
    trials: tuple[TrialResult, ...]

    @property
    def key(self) -> str:
        """Protocol key of the metrics report, e.g. ``sysu/all/single``."""
        return f"sysu/{self.mode}/{self.shot}"

    @property
    def per_trial(self) -> list[dict[str, float]]:
        """Summary metrics (fractions) of every trial, in trial order."""
        return [t.result.summary() for t in self.trials]

    def mean_std(self) -> tuple[dict[str, float], dict[str, float]]:
        """Mean and population std over trials (fractions)."""
        return summarize_trials(self.per_trial)


def _camids(samples: Sequence[Sample]) -> np.ndarray:
    return np.fromiter((s.camera for s in samples), dtype=np.int64, count=len(samples))


def _pids(samples: Sequence[Sample]) -> np.ndarray:
    return np.fromiter((s.identity for s in samples), dtype=np.int64, count=len(samples))


def sysu_protocol(
    query: Sequence[Sample],
    query_feat: np.ndarray,
    gallery_pool: Sequence[Sample],
    pool_feat: np.ndarray,
    *,
    mode: str = "all",
    shot: str = "single",
    sampler: str = "community",
    trials: int | Sequence[int] = SYSU_TRIALS,
    perms: OfficialPermutations | None = None,
    stable: bool = False,
    chunk: int = 1024,
    max_rank: int = 20,
    rerank: bool = False,
) -> ProtocolResult:
    """Run one SYSU (mode, shot) over trials (``int n``: trials ``0..n-1``).

    ``query_feat[i]`` is the feature of ``query[i]``, ``pool_feat[j]`` of ``gallery_pool[j]``.
    ``rerank`` applies k-reciprocal re-ranking to each trial's distances.
    """
    _check_mode_shot(mode, shot)
    query_feat = np.asarray(query_feat)
    pool_feat = np.asarray(pool_feat)
    if query_feat.shape[0] != len(query) or pool_feat.shape[0] != len(gallery_pool):
        raise ValueError(
            f"features do not match samples: query {query_feat.shape[0]} vs {len(query)}, "
            f"pool {pool_feat.shape[0]} vs {len(gallery_pool)}")
    bad = sorted({s.camera for s in query} - set(SYSU_QUERY_CAMERAS))
    if bad:
        raise ValueError(f"SYSU queries must come from cameras {SYSU_QUERY_CAMERAS}, found cameras {bad}")
    trial_ids = list(range(trials)) if isinstance(trials, int) else list(trials)
    q_pids, q_cams = _pids(query), _camids(query)
    g_pids_all, g_cams_all = _pids(gallery_pool), _camids(gallery_pool)
    out = []
    for t in trial_ids:
        idx = sample_gallery(gallery_pool, mode, shot, t, sampler, perms)
        g_feat = pool_feat[idx]
        if rerank:
            from vireid.evaluation.rerank import rerank_features

            dist = rerank_features(query_feat, g_feat)
            res = evaluate_ranking(dist, q_pids, g_pids_all[idx], q_cams, g_cams_all[idx],
                                   sysu_removal=True, max_rank=max_rank, stable=stable, chunk=chunk)
        else:
            res = evaluate_features(query_feat, g_feat, q_pids, g_pids_all[idx], q_cams,
                                    g_cams_all[idx], sysu_removal=True, max_rank=max_rank,
                                    stable=stable, chunk=chunk)
        out.append(TrialResult(trial=t, gallery=idx, result=res))
    return ProtocolResult(mode=mode, shot=shot, sampler=sampler, trials=tuple(out))


def sysu_protocols(
    query: Sequence[Sample],
    query_feat: np.ndarray,
    gallery_pool: Sequence[Sample],
    pool_feat: np.ndarray,
    *,
    modes: Sequence[str] = ("all", "indoor"),
    shots: Sequence[str] = ("single", "multi"),
    **kwargs: object,
) -> dict[str, ProtocolResult]:
    """Every (mode, shot) asked for, keyed ``sysu/<mode>/<shot>``; kwargs go to :func:`sysu_protocol`."""
    results = {}
    for mode in modes:
        for shot in shots:
            r = sysu_protocol(query, query_feat, gallery_pool, pool_feat, mode=mode, shot=shot,
                              **kwargs)  # type: ignore[arg-type]
            results[r.key] = r
    return results
