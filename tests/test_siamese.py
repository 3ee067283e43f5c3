"""Siamese networks: balanced sampling, one shared encoder, unseen-class episodes, the runs format,
calibration, verification against a generated gallery, and a tiny model that beats chance, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from transferkit.errors import TransferkitError
from transferkit.tasks.siamese import SiameseConfig, calibrate, evaluate, evaluate_runs, fit, verify
from transferkit.tasks.siamese.thresholds import choose_threshold, verification_pairs
from transferkit.tasks.siamese.data import (
    AffineRanges, ClassBatchSampler, ImageSet, TrainImages, balanced_pairs, crop_to_ink, elastic_field, load_image_set,
    random_affine, read_images)
from transferkit.tasks.siamese.episodes import mean_ci95, read_runs, sample_episodes, write_runs
from transferkit.tasks.siamese.oneshot import seen_filter
from transferkit.tasks.siamese.losses import make_objective
from transferkit.tasks.siamese.model import SiameseNet, make_encoder

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and leave the other core to the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- generated data


def face(params: np.ndarray, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A grey cartoon face: head, two eyes, nose and mouth placed by the identity's ``params`` (+ jitter)."""
    hw, hh, eye_dx, eye_y, eye_r, mouth_w, mouth_y, nose = np.maximum(params + rng.normal(0, 0.012, len(params)), 0.01)
    s = size * 4  # draw large, then downsample (anti-aliasing)
    img = Image.new("L", (s, s), 235)
    d = ImageDraw.Draw(img)
    cx, cy = s / 2 + rng.normal(0, 1.5), s / 2 + rng.normal(0, 1.5)
    d.ellipse([cx - hw * s, cy - hh * s, cx + hw * s, cy + hh * s], fill=170, outline=60, width=3)
    for sx in (-1, 1):
        ex, ey, r = cx + sx * eye_dx * s, cy - eye_y * s, eye_r * s
        d.ellipse([ex - r, ey - r, ex + r, ey + r], fill=20)
    d.line([cx, cy - 0.02 * s, cx, cy + nose * s], fill=60, width=4)
    my = cy + mouth_y * s
    d.line([cx - mouth_w * s, my, cx + mouth_w * s, my], fill=30, width=5)
    return img.resize((size, size), Image.BILINEAR)


def identity_params(rng: np.random.Generator) -> np.ndarray:
    lo = np.array([0.28, 0.32, 0.08, 0.06, 0.025, 0.05, 0.12, 0.05])
    hi = np.array([0.42, 0.46, 0.18, 0.16, 0.06, 0.16, 0.26, 0.14])
    return rng.uniform(lo, hi)


def make_faces(root: Path, n_ids: int, per_id: int, seed: int, prefix: str = "person") -> dict[str, np.ndarray]:
    """``root/<prefix>NN/*.png``: ``per_id`` images of each of ``n_ids`` generated identities."""
    rng = np.random.default_rng(seed)
    params = {}
    for k in range(n_ids):
        name = f"{prefix}{k:02d}"
        params[name] = identity_params(rng)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_id):
            face(params[name], rng).save(root / name / f"{i}.png")
    return params


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faces")
    make_faces(root / "train", 16, 8, seed=1)
    make_faces(root / "heldout", 8, 6, seed=2, prefix="visitor")
    return {"train": root / "train", "heldout": root / "heldout", "root": root}


TINY = dict(image_size=32, width=0.5, embedding=32, epochs=4, steps_per_epoch=15, batch_size=32, per_class=4,
            val_classes=0.25, warmup_steps=5, lr=3e-3, precision="32", device="cpu", seed=0,
            augment_p=0.0)  # Koch's distortions are for characters; a face's geometry is its identity here


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory) -> Path:
    """A small-cnn trained for 60 steps on 12 generated identities (4 held out)."""
    run = tmp_path_factory.mktemp("runs") / "faces_run"
    return fit(SiameseConfig(**TINY), faces["train"], run)


# --------------------------------------------------------------------------- sampling


def test_class_batches_are_balanced_and_rotations_never_share_a_batch():
    labels = np.repeat(np.arange(10), 6)
    labels[-3:] = 9  # class 9 has 9 images
    images = np.zeros((len(labels), 8, 8), np.uint8)
    ds = TrainImages(images, labels, rotations=True)
    sampler = ClassBatchSampler(ds, classes_per_batch=5, per_class=4, steps=20, seed=3)
    batches = list(sampler)
    assert len(batches) == 20
    for b in batches:
        assert len(b) == len(set(b)) == 20  # 5 classes x 4 distinct images
        ys = [ds.label(v) for v in b]
        counts = np.unique(ys, return_counts=True)[1]
        assert len(counts) == 5 and set(counts) == {4}
        base = {v % ds.n for v in b}
        assert len({labels[i] for i in base}) == 5  # one rotation of a base class at most
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new epoch, new batches; the same epoch, the same batches
    sampler.set_epoch(0)
    assert list(sampler) == batches


def test_alphabet_batches_draw_their_classes_from_that_many_alphabets():
    labels = np.repeat(np.arange(40), 3)
    ds = TrainImages(np.zeros((len(labels), 8, 8), np.uint8), labels, rotations=True)
    alphabet = [f"a{c // 10}" for c in range(40)]  # four alphabets of ten characters
    one = ClassBatchSampler(ds, classes_per_batch=8, per_class=2, steps=30, seed=0, groups=alphabet, groups_per_batch=1)
    for b in one:
        base = {int(labels[v % ds.n]) for v in b}
        assert len(base) == 8 and len({c // 10 for c in base}) == 1  # one alphabet holds enough characters
    # two alphabets' worth of classes from one alphabet: topped up from the others, still distinct classes
    topped = ClassBatchSampler(ds, classes_per_batch=14, per_class=2, steps=30, seed=0, groups=alphabet,
                               groups_per_batch=1)
    for b in topped:
        base = [int(labels[v % ds.n]) for v in b[::2]]
        assert len(set(base)) == 14 and np.bincount([c // 10 for c in base]).max() == 10
    plain = ClassBatchSampler(ds, classes_per_batch=8, per_class=2, steps=30, seed=0)
    assert max(len({int(labels[v % ds.n]) // 10 for v in b}) for b in plain) > 2  # off: classes from anywhere


def test_centring_compares_unit_embeddings_minus_the_support_mean():
    from transferkit.tasks.siamese.episodes import Episode, center_on_support, episode_predictions

    ep = Episode(np.arange(6), np.arange(6)[:, None], np.arange(6, 12)[:, None])
    changed = 0
    for k in range(20):
        emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(k)) + 1.5, dim=-1)
        sup, qry = emb[:6], emb[6:]
        mu = sup.mean(0)
        s, q = center_on_support(sup, qry)
        assert torch.allclose(s, torch.nn.functional.normalize(sup - mu, dim=-1))
        assert torch.allclose(q, torch.nn.functional.normalize(qry - mu, dim=-1))
        pred, d = episode_predictions(torch.cdist, emb, ep, center=True)
        assert np.allclose(d, torch.cdist(q, s).numpy(), atol=1e-5) and np.array_equal(pred, d.argmin(1))
        changed += not np.array_equal(pred, episode_predictions(torch.cdist, emb, ep)[0])
    assert changed > 0  # centring is not a no-op
    # two candidates: centring changes no decision
    two = Episode(np.arange(2), np.arange(2)[:, None], np.arange(6, 8)[:, None])
    for k in range(20):
        e = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(k)), dim=-1)
        assert np.array_equal(episode_predictions(torch.cdist, e, two)[0],
                              episode_predictions(torch.cdist, e, two, center=True)[0])


def test_aligned_views_score_the_best_lined_up_pairs_of_views():
    from transferkit.tasks.siamese.matching import aligned_view_similarity

    g = torch.Generator().manual_seed(0)
    views = torch.nn.functional.normalize(torch.randn(6, 5, 8, generator=g), dim=-1)  # 6 images, 5 views each
    sim = aligned_view_similarity(views, views)
    assert torch.allclose(sim.diagonal(), torch.ones(6), atol=1e-5)  # an image lines up with itself exactly
    assert (sim.argmax(dim=1) == torch.arange(6)).all()
    # the mean of the 5 best of the 5 x 5 view similarities, computed in chunks of any size
    brute = torch.stack([torch.stack([(views[i] @ views[j].T).flatten().topk(5).values.mean() for j in range(6)])
                         for i in range(6)])
    assert torch.allclose(sim, brute, atol=1e-5) and torch.allclose(aligned_view_similarity(views, views, chunk=2), sim)
    # one view each: plain cosine similarity
    one = views[:, :1]
    assert torch.allclose(aligned_view_similarity(one, one), one[:, 0] @ one[:, 0].T, atol=1e-6)
    # a candidate whose distortions line up with the query's wins over one that only agrees on average:
    # A shares four of the query's five views exactly, B is the query's mean embedding repeated
    q = views[:1]
    a = torch.cat([q[:, :4], -q[:, 4:]], dim=1)
    b = torch.nn.functional.normalize(q.mean(1, keepdim=True), dim=-1).expand(1, 5, 8)
    cand = torch.cat([a, b])
    mean_cos = torch.nn.functional.normalize(q.mean(1), dim=-1) @ torch.nn.functional.normalize(cand.mean(1), dim=-1).T
    assert mean_cos.argmax() == 1 and aligned_view_similarity(q, cand).argmax() == 0


def test_local_match_finds_a_stroke_wherever_it_is():
    from transferkit.tasks.siamese.matching import local_similarity, standardise

    g = torch.Generator().manual_seed(0)
    maps = torch.randn(5, 16, 4, 4, generator=g)
    moved = maps[:, :, torch.randperm(4, generator=g)][:, :, :, torch.randperm(4, generator=g)]  # cells shuffled
    sim = local_similarity(moved, maps)
    assert (sim.argmax(dim=1) == torch.arange(5)).all()  # each image matches its own cells, wherever they are
    flat = torch.nn.functional.normalize(moved.flatten(1), dim=-1) @ torch.nn.functional.normalize(maps.flatten(1), dim=-1).T
    assert float(sim.diagonal().min()) > float(flat.diagonal().max())  # the aligned map comparison loses them
    assert torch.allclose(local_similarity(moved, maps, chunk=2), sim)
    z = standardise(torch.randn(3, 7, generator=g) * 5 + 2)
    assert torch.allclose(z.mean(1), torch.zeros(3), atol=1e-5) and torch.allclose(z.std(1), torch.ones(3), atol=1e-4)


def test_matching_combines_scores_and_plain_matching_is_the_old_rule():
    from transferkit.tasks.siamese.episodes import Episode, episode_predictions
    from transferkit.tasks.siamese.matching import Embedded, Matching, standardise

    g = torch.Generator().manual_seed(1)
    views = torch.nn.functional.normalize(torch.randn(12, 4, 8, generator=g), dim=-1)
    maps = torch.randn(12, 6, 3, 3, generator=g)
    e = Embedded(views, maps)
    ep = Episode(np.arange(6), np.arange(6)[:, None], np.arange(6, 12)[:, None])
    for center in (False, True):  # plain matching: the mean embeddings' distances, as before
        pred, d = episode_predictions(torch.cdist, e, ep, matching=Matching(center=center))
        old_pred, old_d = episode_predictions(torch.cdist, e.mean(), ep, center=center)
        assert np.array_equal(pred, old_pred) and np.allclose(d, old_d, atol=1e-6)
    q, s = e.take(np.arange(6, 12)), e.take(np.arange(6))
    aligned = Matching(center=True, align=True).scores(q, s)
    both = Matching(center=True, align=True, local=0.5).scores(q, s)
    from transferkit.tasks.siamese.matching import local_similarity

    assert torch.allclose(both, standardise(aligned) + 0.5 * standardise(local_similarity(q.maps, s.maps)), atol=1e-5)
    pred, d = episode_predictions(torch.cdist, e, ep, matching=Matching(center=True, align=True, local=0.5))
    assert np.array_equal(pred, both.argmax(1).numpy()) and np.allclose(d, -both.numpy(), atol=1e-5)
    # no maps (an encoder without one): the local term is skipped, not an error
    no_maps = Embedded(views)
    assert torch.allclose(Matching(align=True, local=0.5).scores(no_maps.take(range(6, 12)), no_maps.take(range(6))),
                          Matching(align=True).scores(q, s), atol=1e-6)


def test_rotated_classes_are_rotated_images():
    img = np.zeros((1, 6, 6), np.uint8)
    img[0, 0, :] = 255  # a bar along the top
    ds = TrainImages(np.repeat(img, 2, 0), np.array([0, 0]), rotations=True)
    x, y = ds.__getitems__([0, 2, 4, 6])  # image 0 at 0, 90, 180, 270 degrees
    assert y.tolist() == [0, 1, 2, 3]
    assert x[0, 0].sum() == 6 * 255 and x[2, -1].sum() == 6 * 255  # 180 degrees: the bar at the bottom
    assert x[1, :, 0].sum() == 6 * 255  # 90 degrees counter-clockwise: the bar on the left


def test_mirrored_classes_are_mirrored_images_and_never_share_a_batch_with_the_original():
    img = np.zeros((1, 6, 6), np.uint8)
    img[0, :, 0] = 255  # a bar down the left side
    ds = TrainImages(np.repeat(img, 2, 0), np.array([0, 1]), rotations=True, mirror=True)
    assert ds.views == 8 and len(ds) == 16
    x, y = ds.__getitems__([0, 8, 10])  # image 0 as is, mirrored (view 4), mirrored then turned 90 degrees (view 5)
    assert y.tolist() == [0, 8, 10]  # view v of class c is class v * 2 + c
    assert x[0, :, 0].sum() == 6 * 255 and x[1, :, -1].sum() == 6 * 255  # mirrored: the bar on the right
    assert x[2, 0, :].sum() == 6 * 255  # then a quarter-turn counter-clockwise: the bar along the top
    labels = np.repeat(np.arange(6), 4)
    ds = TrainImages(np.zeros((len(labels), 6, 6), np.uint8), labels, rotations=False, mirror=True)
    for b in ClassBatchSampler(ds, classes_per_batch=3, per_class=2, steps=30, seed=0):
        assert len({labels[v % ds.n] for v in b}) == 3  # a character and its mirror image are never both in a batch


def test_balanced_pairs_never_pair_an_image_with_itself():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    i, j, t = balanced_pairs(y, generator=torch.Generator().manual_seed(0))
    assert int(t.sum()) == int((1 - t).sum()) > 0  # as many same as different pairs
    assert bool((i != j).all())
    assert bool(((y[i] == y[j]).float() == t).all())
    scores = torch.randn(10, 10)
    i2, j2, t2 = balanced_pairs(y, hard_scores=scores)
    neg = t2 == 0
    hardest = scores[i2[neg], j2[neg]].min()
    all_neg = scores[(y[:, None] != y[None]) & torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)]
    assert int((all_neg > hardest).sum()) <= int(neg.sum())  # hard mining takes the most similar different pairs


@pytest.mark.parametrize("loss,mining", [("triplet", "semihard"), ("triplet", "hard"), ("contrastive", "semihard")])
def test_mined_tuples_are_valid(loss, mining):
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(24, 8), dim=-1)
    y = torch.arange(6).repeat_interleave(4)
    obj = make_objective(loss, 0.5, mining)
    tuples = obj.miner(emb, y)
    if len(tuples) == 3:  # (anchor, positive, negative)
        a, p, n = tuples
        assert len(a) > 0
        assert bool((a != n).all()) and bool((y[a] != y[n]).all())
        assert bool((a != p).all()) and bool((y[a] == y[p]).all())
    else:  # (a1, p, a2, n)
        a1, p, a2, n = tuples
        assert bool((a1 != p).all()) and bool((y[a1] == y[p]).all())
        assert bool((a2 != n).all()) and bool((y[a2] != y[n]).all())
    assert float(obj(emb, y, None)) >= 0


def test_one_encoder_shared_by_both_twins():
    enc, _ = make_encoder("small-cnn", 1, 32, 16, width=0.25)
    net = SiameseNet(enc, 16, "pair", 1, [0.5], [0.25])
    n_encoder = sum(p.numel() for p in enc.parameters())
    n_total = sum(p.numel() for p in net.parameters())
    assert n_total == n_encoder + 16 + 1  # one encoder + Koch's head (alpha, bias): no second copy
    x1, x2 = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    net.eval()
    loss = net.distance(net.embed(x1), net.embed(x2)).sum()
    loss.backward()
    conv = net.encoder.stages[0].conv.weight
    assert conv.grad is not None and conv.grad.abs().sum() > 0
    # the same image through either twin gives the same embedding, and distance zero to itself
    with torch.no_grad():
        e = net.embed(x1)
        assert torch.equal(e, net.embed(x1.clone()))
        assert torch.allclose(torch.diagonal(net.cdist(e, e)), net.distance(e, e))


def test_affine_distortion_keeps_a_blank_page_blank_and_can_be_off():
    x = torch.ones(4, 1, 20, 20)
    y = random_affine(x, AffineRanges(p=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(y, x)  # borders are replicated: white stays white
    z = torch.rand(4, 1, 20, 20)
    assert torch.equal(random_affine(z, AffineRanges(p=0.0)), z)
    moved = random_affine(z, AffineRanges(p=1.0), torch.Generator().manual_seed(0))
    assert not torch.allclose(moved, z)
    bent = AffineRanges(rotate=0, shear=0, scale=(1, 1), translate=0, p=1.0, elastic=0.05)
    assert torch.allclose(random_affine(x, bent, torch.Generator().manual_seed(0)), x)  # elastic keeps white white
    assert not torch.allclose(random_affine(z, bent, torch.Generator().manual_seed(0)), z)
    field = elastic_field(8, 20, 20, 0.05, torch.Generator().manual_seed(0))
    assert field.shape == (8, 20, 20, 2) and float(field.abs().max()) <= 2 * 0.05 * 1.3  # bicubic may overshoot a little


def test_test_time_augmentation_is_fixed_per_image_and_off_at_zero():
    from transferkit.tasks.siamese.oneshot import embed_images

    torch.manual_seed(0)
    enc, _ = make_encoder("small-cnn", 1, 32, 16, width=0.25)
    net = SiameseNet(enc, 16, "metric", 1, [0.5], [0.25]).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    plain = embed_images(net, images, tta=0)
    with torch.no_grad():
        assert torch.allclose(plain, net.embed(torch.from_numpy(images)[:, None].float() / 255), atol=1e-6)
    aug = embed_images(net, images, tta=4)
    assert aug.shape == (5, 16) and torch.allclose(aug.norm(dim=-1), torch.ones(5), atol=1e-5)  # still unit vectors
    assert not torch.allclose(aug, plain, atol=1e-4)
    # an image's embedding does not depend on the batch it is in
    assert torch.allclose(embed_images(net, images[3:4], tta=4), aug[3:4], atol=1e-5)
    assert torch.allclose(embed_images(net, images, tta=4, batch_size=2), aug, atol=1e-5)
    # a saved model's embedding uses its stored views and distortion ranges
    from transferkit.tasks.siamese.oneshot import model_embed

    ranges = AffineRanges(rotate=5.0, shear=0.1, scale=(0.9, 1.1), translate=0.05, p=1.0, elastic=0.06)
    model = SimpleNamespace(module=net, config={"siamese": {"tta": 4, "augment": json.loads(json.dumps(vars(ranges)))}})
    assert torch.allclose(model_embed(model, images), embed_images(net, images, tta=4, ranges=ranges), atol=1e-6)
    assert not torch.allclose(model_embed(model, images), aug, atol=1e-4)  # not Koch's default ranges
    older = SimpleNamespace(module=net, config={"siamese": {}})  # saved before --tta existed: no augmentation
    assert torch.allclose(model_embed(older, images), plain, atol=1e-6)
    # every view, and the encoder's last map (mean over the views): what aligned and local matching compare
    from transferkit.tasks.siamese.oneshot import embed_views

    ev = embed_views(net, images, tta=4, maps=True, batch_size=2)
    assert ev.views.shape == (5, 5, 16) and torch.allclose(ev.views[:, 0], plain, atol=1e-5)
    assert torch.allclose(ev.mean(), aug, atol=1e-5)
    with torch.no_grad():
        emb, fmap = net.embed_and_map(torch.from_numpy(images)[:, None].float() / 255)
    assert torch.allclose(emb, plain, atol=1e-5) and fmap.ndim == 4 and ev.maps.shape == (5, *fmap.shape[1:])
    assert embed_views(net, images, tta=4).maps is None  # only when asked


# --------------------------------------------------------------------------- episodes and the runs format


def test_episodes_are_seeded_and_use_only_the_pool():
    labels = np.repeat(np.arange(30), 5)
    pool = list(range(10, 30))
    eps = sample_episodes(labels, pool, way=5, shot=2, queries=2, n=50, seed=7)
    again = sample_episodes(labels, pool, way=5, shot=2, queries=2, n=50, seed=7)
    for e, f in zip(eps, again):
        assert np.array_equal(e.support, f.support) and np.array_equal(e.query, f.query)
    for e in eps:
        assert set(labels[e.support.ravel()]) | set(labels[e.query.ravel()]) <= set(pool)
        assert len(set(e.support.ravel()) | set(e.query.ravel())) == 5 * 4  # all distinct
        assert all((labels[e.support[r]] == e.classes[r]).all() for r in range(5))
    with pytest.raises(TransferkitError, match="need 5 classes"):
        sample_episodes(labels, [1, 2, 3], way=5, shot=1, queries=1, n=1)
    m, ci = mean_ci95([1.0, 0.5, 0.75, 0.25])
    assert m == pytest.approx(0.625) and 0 < ci < 0.5


def test_eval_excludes_seen_classes_and_alphabets():
    ds = ImageSet(np.zeros((8, 4, 4), np.uint8), np.arange(8) // 2,
                  ["Greek/c1", "Greek/c2", "Tagalog/c1", "Sanskrit/c9"], "omniglot", [])

    class Model:
        config = {"class_names": ["Korean/c1", "Latin/c3"], "training": {"alphabets": ["Greek", "Korean", "Latin"]}}

    keep, info = seen_filter(Model(), ds)
    assert [ds.classes[k] for k in keep] == ["Tagalog/c1", "Sanskrit/c9"]
    assert info["excluded_alphabets"] == ["Greek"] and info["excluded_classes"] == 2
    Model.config = {"class_names": ["Tagalog/c1"], "training": {"alphabets": []}}
    keep, _ = seen_filter(Model(), ds)
    assert "Tagalog/c1" not in [ds.classes[k] for k in keep] and len(keep) == 3


def test_runs_reader_reads_what_the_writer_wrote(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12 * 3, 10, 10), dtype=np.uint8)
    labels = np.repeat(np.arange(12), 3)
    classes = [f"A{c // 6}/ch{c}" for c in range(12)]
    write_runs(images, labels, classes, tmp_path / "runs", n_runs=3, way=5, seed=1, groups=[c.split("/")[0] for c in classes])
    runs = read_runs(tmp_path / "runs")
    assert [r.name for r in runs] == ["run01", "run02", "run03"]
    for r in runs:
        assert len(r.training) == 5 and len(r.test) == 5 and sorted(r.answers) == list(range(5))
        for t, a in zip(r.test, r.answers):  # the answer's image is the same class's other drawing
            test_img = np.asarray(Image.open(t))
            train_img = np.asarray(Image.open(r.training[a]))
            ct = labels[[k for k in range(len(images)) if np.array_equal(images[k], test_img)][0]]
            ca = labels[[k for k in range(len(images)) if np.array_equal(images[k], train_img)][0]]
            assert ct == ca and not np.array_equal(test_img, train_img)
    # paths relative to the run folder (another common spelling) are accepted too
    run1 = tmp_path / "runs" / "run01"
    text = (run1 / "class_labels.txt").read_text().replace("run01/", "")
    (run1 / "class_labels.txt").write_text(text)
    assert read_runs(tmp_path / "runs")[0].answers == runs[0].answers
    (run1 / "class_labels.txt").write_text("test/item01.png\n")
    with pytest.raises(TransferkitError, match="expected"):
        read_runs(tmp_path / "runs")
    with pytest.raises(TransferkitError, match="no runNN"):
        read_runs(tmp_path)


# --------------------------------------------------------------------------- calibration


def test_calibration_threshold_separates_separable_groups():
    rng = np.random.default_rng(0)
    same, diff = rng.uniform(0.1, 0.4, 300), rng.uniform(0.7, 1.2, 300)
    cal = choose_threshold(same, diff)
    assert same.max() < cal.threshold < diff.min()
    assert cal.far == 0 and cal.frr == 0 and cal.eer == 0 and cal.auc == 1.0
    # overlapping groups: EER where FAR ~ FRR; a target FAR is respected
    same, diff = rng.normal(0.4, 0.1, 2000), rng.normal(0.7, 0.1, 2000)
    cal = choose_threshold(same, diff)
    assert abs(cal.far - cal.frr) < 0.01 and 0.05 < cal.eer < 0.1
    strict = choose_threshold(same, diff, target_far=0.01)
    assert strict.far <= 0.01 and strict.threshold < cal.threshold and strict.method == "far"


def test_verification_pairs_are_balanced_and_distinct():
    labels = np.repeat(np.arange(5), 4)
    i, j, same = verification_pairs(labels, 100, seed=0)
    assert same.sum() == (1 - same).sum() == 5 * 6  # every same pair that exists, and as many different ones
    assert (i != j).all()
    assert ((labels[i] == labels[j]) == same.astype(bool)).all()


# --------------------------------------------------------------------------- end to end


def test_data_layouts(tmp_path, faces):
    ds = load_image_set(faces["train"], 24)
    assert ds.kind == "folders" and ds.grey and ds.images.shape[1:] == (24, 24) and len(ds.classes) == 16
    omni = tmp_path / "omni"
    for a in ("Alpha", "Beta"):
        for c in ("character01", "character02"):
            (omni / a / c).mkdir(parents=True)
            for k in range(2):
                Image.new("L", (105, 105), 255).save(omni / a / c / f"x_{k:02d}.png")
    ds = load_image_set(omni, 52)
    assert ds.kind == "omniglot" and ds.classes[0] == "Alpha/character01" and ds.group_of(ds.classes[3]) == "Beta"
    assert ds.ink_cropped and not load_image_set(omni, 52, ink=False).ink_cropped  # characters: cropped by default
    assert not load_image_set(faces["train"], 24).ink_cropped  # class folders: only when asked
    assert load_image_set(faces["train"], 24, ink=True).ink_cropped


def drawn_l(box: tuple[int, int, int, int], size: int = 105) -> Image.Image:
    """A black 'L' on white inside ``box`` (left, top, right, bottom): a character as one drawer placed it."""
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    w = max(2, (x1 - x0) // 6)
    d.rectangle([x0, y0, x0 + w, y1], fill=0)
    d.rectangle([x0, y1 - w, x1, y1], fill=0)
    return img


def test_crop_to_ink_removes_position_and_size_but_keeps_shape(tmp_path):
    small_left = np.asarray(drawn_l((10, 15, 40, 75)))  # 30 x 60 ink, near the top-left
    big_right = np.asarray(drawn_l((45, 10, 90, 100)))  # 45 x 90 ink, elsewhere: the same character, larger
    a, b = crop_to_ink(small_left), crop_to_ink(big_right)
    assert a.shape[0] == a.shape[1] and b.shape[0] == b.shape[1]  # squares around the ink
    assert a.shape[0] == pytest.approx(60 * 1.16 + 2, abs=2)  # the longer side plus the margins
    from transferkit.tasks.siamese.data import _resize

    ra, rb = _resize(a, 32).astype(float), _resize(b, 32).astype(float)
    raw_a, raw_b = _resize(small_left, 32).astype(float), _resize(big_right, 32).astype(float)
    assert np.abs(ra - rb).mean() < 0.25 * np.abs(raw_a - raw_b).mean()  # nearly the same picture once cropped
    ink = np.argwhere(ra < 128)
    height, width = np.ptp(ink, axis=0) + 1
    assert 1.6 < height / width < 2.4  # the aspect ratio (2:1) is kept, not squashed to a square
    blank = np.full((105, 105), 255, np.uint8)
    assert crop_to_ink(blank) is blank
    # white ink on black: the background is whatever the border is
    inverted = 255 - big_right
    assert np.array_equal(crop_to_ink(inverted), 255 - b)
    # files: read_images crops only when asked, and only grey images
    drawn_l((45, 10, 90, 100)).save(tmp_path / "l.png")
    plain, _ = read_images([tmp_path / "l.png"], 32, grey=True)
    cropped, _ = read_images([tmp_path / "l.png"], 32, grey=True, ink=True)
    assert np.array_equal(cropped[0], _resize(b, 32)) and not np.array_equal(plain[0], cropped[0])
    colour, _ = read_images([tmp_path / "l.png"], 32, grey=False, ink=True)
    assert np.array_equal(colour[0, ..., 0], plain[0])


def test_trained_model_beats_chance_on_unseen_identities(trained, faces):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 60
    res = evaluate(trained, faces["heldout"], way=5, shot=1, episodes=60, seed=0)
    assert res["classes"] == 8 and res["excluded_classes"] == 0
    assert res["accuracy"] > 0.6, res  # chance is 0.2
    assert 0 < res["ci95"] < 0.2
    # the training identities are excluded from episodes: not enough unseen ones remain there
    with pytest.raises(TransferkitError, match="has 0 classes the model has not seen"):
        evaluate(trained, faces["train"], way=5)


def test_calibrate_then_verify_rejects_an_unknown_face(trained, faces, tmp_path):
    rec = calibrate(trained, faces["heldout"], pairs=300, seed=0)
    assert rec["method"] == "eer" and rec["eer"] < 0.35 and rec["auc"] > 0.7
    stored = json.loads((trained / "model" / "config.json").read_text())["verification"]
    assert stored["threshold"] == pytest.approx(rec["threshold"])
    assert (trained / "calibration_hist.png").is_file() and (trained / "calibration_roc.png").is_file()
    # a gallery of four generated people; probes: new photos of two of them, and two strangers
    rng = np.random.default_rng(11)
    gallery, probes = tmp_path / "gallery", tmp_path / "probes"
    probes.mkdir()
    people = {f"p{k}": identity_params(rng) for k in range(4)}
    for name, prm in people.items():
        (gallery / name).mkdir(parents=True)
        for i in range(2):
            face(prm, rng).save(gallery / name / f"{i}.png")
    face(people["p1"], rng).save(probes / "known_p1.png")
    face(people["p3"], rng).save(probes / "known_p3.png")
    stranger = np.array([0.45, 0.30, 0.20, 0.03, 0.075, 0.19, 0.29, 0.03])  # unlike anyone in the gallery
    for k in range(2):
        face(stranger, rng).save(probes / f"unknown_{k}.png")
    strict = calibrate(trained, faces["heldout"], target_far=0.02, pairs=300, seed=0)
    assert strict["method"] == "far" and strict["far"] <= 0.02 and strict["threshold"] < rec["threshold"]
    out = {Path(r["path"]).stem: r for r in verify(trained, gallery, [probes])}
    assert out["known_p1"]["identity"] == "p1" and out["known_p3"]["identity"] == "p3"
    assert not out["unknown_0"]["match"] and not out["unknown_1"]["match"]
    assert min(out["unknown_0"]["distance"], out["unknown_1"]["distance"]) > max(
        out["known_p1"]["distance"], out["known_p3"]["distance"])
    assert all(r["threshold"] == pytest.approx(strict["threshold"]) for r in out.values())


def test_report_and_model_directory(trained):
    html = (trained / "report.html").read_text()
    for name in ("curves_loss.png", "curves_val_acc.png", "distances.png", "roc.png", "episodes.png"):
        assert (trained / name).is_file()
        assert f"data-file='{name}'" in html
    import transferkit

    model = transferkit.load(trained)
    assert model.task == "siamese" and model.config["verification"]["threshold"] > 0
    assert sorted(model.config["class_names"]) == sorted(f"person{k:02d}" for k in range(16))
    assert len(model.config["training"]["val_classes"]) == 4
    from transferkit.tasks.siamese.oneshot import model_center

    assert model_center(model) and not model_center(SimpleNamespace(config={"siamese": {}}))  # older models: off
    from transferkit.tasks.siamese.matching import Matching
    from transferkit.tasks.siamese.oneshot import model_matching

    assert model_matching(model) == Matching(center=True, align=True, local=0.3)  # fit's defaults for small-cnn
    assert model_matching(model, center=False, align=False, local=0) == Matching()
    assert model_matching(SimpleNamespace(config={"siamese": {"center": True}})) == Matching(center=True)  # older
    assert model_matching(SimpleNamespace(config={"siamese": {"head": "pair", "align": True, "local": 0.3}})) == Matching()
    with pytest.raises(TransferkitError, match="--local-match"):
        model_matching(model, local=-1)
    assert SiameseConfig(encoder="efficientnet_lite0").resolved_local_match() == 0.0
    assert SiameseConfig(local_match=0.5).resolved_local_match() == 0.5
    from transferkit.tasks.siamese.oneshot import image_format

    assert image_format(model) == (32, True, False)  # faces in class folders: not cropped to ink
    old = SimpleNamespace(config={"preprocessing": model.config["preprocessing"], "siamese": {"grey": True}})
    assert image_format(old) == (32, True, False)  # models saved before --crop-ink read images whole
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert model.module(x).shape == (2, 32)


@pytest.mark.parametrize("loss", ["pair", "contrastive", "triplet", "multisimilarity"])  # supcon: the `trained` fixture
def test_every_loss_trains_end_to_end_with_its_report(loss, faces, tmp_path):
    # fit runs the whole path (training, validation episodes, threshold, report pictures) for each loss
    run = fit(SiameseConfig(**{**TINY, "epochs": 1, "steps_per_epoch": 4, "loss": loss}), faces["train"], tmp_path / loss)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["loss"] == loss and summary["steps"] == 4
    assert (run / "episodes.png").is_file() and (run / "model" / "model.safetensors").is_file()
    res = evaluate(run, faces["heldout"], way=5, shot=1, episodes=10, seed=0)
    assert 0.0 <= res["accuracy"] <= 1.0


def test_ema_weights_are_what_validation_checkpoints_and_the_model_use(faces, tmp_path):
    # --ema: the averaged weights differ from the raw ones, and best.ckpt's state_dict and the saved model are them
    run = fit(SiameseConfig(**{**TINY, "epochs": 2, "steps_per_epoch": 6, "warmup_steps": 2, "ema": 0.9}),
              faces["train"], tmp_path / "ema")
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"] - 2  # one update per step after the warm-up
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    key = next(k for k in averaged if k.endswith("weight") and "encoder" in k)
    assert not torch.allclose(averaged[key], raw[key])
    from safetensors.torch import load_file

    saved = load_file(run / "model" / "model.safetensors")
    name = key.removeprefix("net.")
    assert torch.equal(saved[name], averaged[key])
    with pytest.raises(TransferkitError, match="--ema"):
        SiameseConfig(ema=1.0).validate()


def test_features_of_an_ink_model_see_drawings_cropped_to_their_ink(trained, tmp_path):
    # `transferkit features --model RUN` must read a drawing as the model was trained: cropped to its ink
    import shutil

    import transferkit
    from transferkit.tasks.siamese.data import crop_to_ink

    ink_model = tmp_path / "ink_model"
    shutil.copytree(trained / "model", ink_model)
    cfg = json.loads((ink_model / "config.json").read_text())
    cfg["siamese"]["ink"] = True
    (ink_model / "config.json").write_text(json.dumps(cfg))
    page = np.full((96, 96), 255, np.uint8)
    page[10:30, 60:75] = 0  # a small dark mark in a corner of a white page
    Image.fromarray(page).save(tmp_path / "page.png")
    Image.fromarray(crop_to_ink(page)).save(tmp_path / "cropped.png")
    ink = transferkit.features([tmp_path / "page.png", tmp_path / "cropped.png"], model=ink_model, workers=0).features
    whole = transferkit.features([tmp_path / "page.png", tmp_path / "cropped.png"], model=trained, workers=0).features
    assert np.allclose(ink[0], ink[1], atol=1e-4)  # the page is cropped, so it reads as its crop
    assert not np.allclose(whole[0], whole[1], atol=1e-2)  # the model without --crop-ink reads the page whole
    # every command that embeds files through the model (index, novelty: the feature cache) crops the same way
    from transferkit.core.featcache import extractor_key
    from transferkit.tasks.index.embed import embed_files

    indexed = embed_files([tmp_path / "page.png"], transferkit.load(ink_model), cache=False).features
    assert np.allclose(indexed[0], ink[0], atol=1e-4)
    assert extractor_key(transferkit.load(ink_model), "pre_logits") != extractor_key(transferkit.load(trained), "pre_logits")
