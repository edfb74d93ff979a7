"""SYSU-MM01 gallery samplers and the whole protocol against the reference fixtures."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest

from tests.evaluation.conftest import EVAL, OFFICIAL, require
from vireid.data.sample import Modality, Sample
from vireid.evaluation.sysu import (
    GallerySamplingError,
    OfficialPermutations,
    community_gallery,
    gallery_folders,
    load_official_permutations,
    official_gallery,
    sample_gallery,
    sysu_protocol,
    sysu_protocols,
)

TOL = 1e-6
MODES_SHOTS = [(m, s) for m in ("all", "indoor") for s in ("single", "multi")]


def _sample(path: str, split: str) -> Sample:
    cam_dir, id_dir, _ = path.split("/")
    cam = int(cam_dir.removeprefix("cam"))
    mod = Modality.INFRARED if cam in (3, 6) else Modality.VISIBLE
    return Sample(path=path, identity=int(id_dir), camera=cam, modality=mod, split=split)


@lru_cache(maxsize=1)
def _tree_pool() -> tuple[Sample, ...]:
    """Gallery pool (visible cameras, test identities) of the public fixture tree."""
    tree = json.loads(require(EVAL / "sysu_tree_public.json").read_text())
    test_ids = {int(x) for x in tree["test_id_txt"].split(",")}
    lines = require(EVAL / tree["listing_file"]).read_text().split()
    pool = [_sample(p, "gallery") for p in lines if p.startswith("cam")]
    return tuple(s for s in pool if s.camera in (1, 2, 4, 5) and s.identity in test_ids)


@lru_cache(maxsize=1)
def _e2e():
    d = np.load(require(EVAL / "sysu_e2e_public.npz"))
    paths = [str(p) for p in d["image_paths"]]
    q_idx = d["query_idx"]
    pool_idx = np.array([i for i, p in enumerate(paths) if _sample(p, "gallery").camera in (1, 2, 4, 5)])
    query = [_sample(paths[i], "query") for i in q_idx]
    pool = [_sample(paths[i], "gallery") for i in pool_idx]
    return d, paths, query, pool, d["features"][q_idx], d["features"][pool_idx]


@pytest.mark.parametrize(("mode", "shot"), MODES_SHOTS)
def test_community_sampler_reproduces_reference_draws(mode: str, shot: str) -> None:
    ref = json.loads(require(EVAL / "sysu_gallery_sampling_public.json").read_text())
    pool = _tree_pool()
    state_py, state_np = __import__("random").getstate(), np.random.get_state()
    for trial in range(10):
        idx = community_gallery(pool, mode, shot, trial)
        want = ref["gallery"][mode][shot][str(trial)]
        assert [pool[i].path for i in idx] == want["img"]
        assert [pool[i].identity for i in idx] == want["pid"]
        assert [pool[i].camera for i in idx] == want["cam"]
    # global random states are left alone
    assert __import__("random").getstate() == state_py
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state_np, strict=True))


def test_query_list_of_fixture_is_cameras_3_and_6() -> None:
    ref = json.loads(require(EVAL / "sysu_gallery_sampling_public.json").read_text())
    d, paths, query, *_ = _e2e()
    assert [s.path for s in query] == ref["query"]["img"]
    assert [s.identity for s in query] == ref["query"]["pid"] == d["q_pids"].tolist()
    assert [s.camera for s in query] == ref["query"]["cam"] == d["q_camids"].tolist()


@pytest.mark.parametrize(("mode", "shot"), MODES_SHOTS)
def test_end_to_end_protocol(mode: str, shot: str) -> None:
    d, paths, query, pool, q_feat, pool_feat = _e2e()
    results = json.loads(require(EVAL / "sysu_e2e_public_results.json").read_text())["cases"]
    pr = sysu_protocol(query, q_feat, pool, pool_feat, mode=mode, shot=shot, sampler="community")
    assert pr.key == f"sysu/{mode}/{shot}" and pr.sampler == "community"
    assert [t.trial for t in pr.trials] == list(range(10))
    for tr in pr.trials:
        key = f"{mode}_{shot}_t{tr.trial}"
        assert [pool[i].path for i in tr.gallery] == [paths[i] for i in d[f"gallery_idx__{key}"]]
        r = tr.result
        np.testing.assert_allclose(r.cmc, d[f"cmc__{key}"], rtol=0, atol=TOL)
        np.testing.assert_allclose(r.cmc, results[key]["cmc_top20"], rtol=0, atol=TOL)
        assert abs(r.mAP - float(d[f"mAP__{key}"])) <= TOL
        assert abs(r.mAP - results[key]["mAP"]) <= TOL
        assert abs(r.mINP - float(d[f"mINP__{key}"])) <= TOL
        assert abs(r.mINP - results[key]["mINP"]) <= TOL
    mean, std = pr.mean_std()
    mAPs = [float(d[f"mAP__{mode}_{shot}_t{t}"]) for t in range(10)]  # noqa: N806
    assert abs(mean["mAP"] - np.mean(mAPs)) <= TOL and abs(std["mAP"] - np.std(mAPs)) <= TOL


def test_protocols_cover_every_mode_and_shot() -> None:
    d, paths, query, pool, q_feat, pool_feat = _e2e()
    out = sysu_protocols(query, q_feat, pool, pool_feat, modes=("indoor",), shots=("single", "multi"),
                         trials=[3])
    assert set(out) == {"sysu/indoor/single", "sysu/indoor/multi"}
    assert [t.trial for t in out["sysu/indoor/multi"].trials] == [3]
    assert len(out["sysu/indoor/multi"].trials[0].gallery) == 1120


def test_official_sampler_takes_rows_of_rand_perm_cam() -> None:
    perms = load_official_permutations(require(OFFICIAL / "rand_perm_cam.mat"))
    pool = _tree_pool()
    # cam1/0006 has 42 images; rand_perm_cam{1}{6} row 0 starts 5, 1, 4, 27, 13, ...
    first = perms.perms[(1, 6)]
    assert first.shape == (10, 42) and first[0, :5].tolist() == [5, 1, 4, 27, 13]
    for shot, k in (("single", 1), ("multi", 10)):
        for trial in (0, 9):
            idx = official_gallery(pool, "all", shot, trial, perms)
            folders = gallery_folders(pool, "all")
            assert len(idx) == k * len(folders) == k * 301
            for n, (identity, cam, files) in enumerate(folders):
                got = [pool[i].path for i in idx[n * k:(n + 1) * k]]
                want = [pool[files[j - 1]].path for j in perms.perms[(cam, identity)][trial, :k]]
                assert got == want
                assert all(p.startswith(f"cam{cam}/{identity:04d}/") for p in got)
    first_draw = pool[official_gallery(pool, "all", "single", 0, perms)[0]].path
    assert first_draw == "cam1/0006/0005.jpg"  # 5th sorted file of cam1/0006
    assert len(official_gallery(pool, "indoor", "multi", 2, perms)) == 1120


def test_official_sampler_refuses_a_tree_it_does_not_describe() -> None:
    pool = [_sample(f"cam1/0006/{i:04d}.jpg", "gallery") for i in range(1, 4)]
    perms = OfficialPermutations({(1, 6): np.tile(np.arange(1, 43), (10, 1))})
    with pytest.raises(GallerySamplingError, match="cam1/0006.*42 images.*3"):
        official_gallery(pool, "all", "single", 0, perms)
    with pytest.raises(GallerySamplingError, match="cam1/0007: no permutation"):
        official_gallery([_sample("cam1/0007/0001.jpg", "gallery")], "all", "single", 0, perms)
    with pytest.raises(ValueError, match="official SYSU sampler needs rand_perm_cam.mat"):
        sample_gallery(pool, "all", "single", 0, "official", None)
    with pytest.raises(ValueError, match="unknown SYSU gallery sampler"):
        sample_gallery(pool, "all", "single", 0, "random")


def test_multi_shot_needs_ten_images_per_folder() -> None:
    pool = [_sample(f"cam2/0011/{i:04d}.jpg", "gallery") for i in range(1, 10)]
    with pytest.raises(GallerySamplingError, match="cam2/0011.*at least 10.*found 9"):
        community_gallery(pool, "indoor", "multi", 0)


def test_sampler_order_is_identity_then_camera_and_ignores_pool_order() -> None:
    paths = ["cam5/0002/0001.jpg", "cam1/0010/0002.jpg", "cam1/0010/0001.jpg", "cam4/0002/0001.jpg",
             "cam2/0002/0003.jpg", "cam3/0002/0001.jpg"]
    pool = [_sample(p, "gallery") for p in paths]
    got = [pool[i].path for i in community_gallery(pool, "all", "single", 0)]
    assert [p.split("/")[:2] for p in got] == [["cam2", "0002"], ["cam4", "0002"], ["cam5", "0002"],
                                               ["cam1", "0010"]]
    indoor = [pool[i].path for i in community_gallery(pool, "indoor", "single", 0)]
    assert [p.split("/")[0] for p in indoor] == ["cam2", "cam1"]
    shuffled = pool[::-1]
    assert [shuffled[i].path for i in community_gallery(shuffled, "all", "single", 4)] == \
        [pool[i].path for i in community_gallery(pool, "all", "single", 4)]


def test_protocol_checks_its_inputs() -> None:
    pool = [_sample("cam1/0001/0001.jpg", "gallery")]
    query = [_sample("cam1/0001/0002.jpg", "query")]
    with pytest.raises(ValueError, match="cameras"):
        sysu_protocol(query, np.ones((1, 4)), pool, np.ones((1, 4)), trials=1)
    with pytest.raises(ValueError, match="features do not match"):
        sysu_protocol(query, np.ones((2, 4)), pool, np.ones((1, 4)), trials=1)
    with pytest.raises(ValueError, match="unknown SYSU mode"):
        community_gallery(pool, "outdoor", "single", 0)
