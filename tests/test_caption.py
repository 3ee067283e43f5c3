"""caption: readers and orphans, vocabulary, decoder options, weight tying, decoding, BLEU/CIDEr-D, a tiny fit, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.caption_data import COLOURS, make_shapes, write_captions
from transferkit.core.vocab import EOS, UNK, Vocab
from transferkit.errors import TransferkitError
from transferkit.tasks.caption.data import clean_caption, read_captions, split_images
from transferkit.tasks.caption.metrics import bleu, cider_d, unique_ratio
from transferkit.tasks.caption.model import CaptionDecoder, count_parameters


# --------------------------------------------------------------------------- readers


def _pairs(cs):
    return sorted((p.name, c) for p, c in cs.pairs())


def test_three_formats_give_the_same_pairs(tmp_path):
    make_shapes(tmp_path / "csv", n_per=2, size=16)
    want = _pairs(read_captions(tmp_path / "csv"))
    assert len(want) == 2 * 2 * len(COLOURS) * 2
    rows = [(p.name, caps) for p, caps in zip(*_images_caps(read_captions(tmp_path / "csv")))]
    for fmt in ("coco", "jsonl"):
        root = tmp_path / fmt
        (root / "images").mkdir(parents=True)
        for p in (tmp_path / "csv" / "images").iterdir():
            (root / "images" / p.name).write_bytes(p.read_bytes())
        f = write_captions(root, rows, fmt)
        assert _pairs(read_captions(root)) == want  # the folder
        assert _pairs(read_captions(f)) == want  # the file itself


def _images_caps(cs):
    return cs.images, cs.captions


def test_orphans_are_counted_and_named(tmp_path):
    root = make_shapes(tmp_path / "d", n_per=1, size=16)
    (root / "images" / "red_square_0.png").unlink()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(root / "images" / "stray.png")
    cs = read_captions(root)
    assert cs.missing == ["red_square_0.png"]
    assert cs.uncaptioned == ["stray.png"]
    assert "1 captioned image(s) not found (red_square_0.png)" in cs.summary()
    assert "stray.png" in cs.summary()
    assert len(cs) == len(COLOURS) * 2 - 1


def test_bad_captions_files_fail_in_one_sentence(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\njust-one-column\n")
    with pytest.raises(TransferkitError, match="expected 'image,caption'"):
        read_captions(tmp_path)
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(TransferkitError, match="line 1"):
        read_captions(bad)
    with pytest.raises(TransferkitError, match="No such file"):
        read_captions(tmp_path / "nope")


def test_clean_caption_and_split():
    assert clean_caption("A dog , running  fast .") == "a dog running fast"
    tr, va = split_images(20, 0.25, seed=3)
    assert len(va) == 5 and not set(tr) & set(va) and sorted(tr + va) == list(range(20))
    assert split_images(20, 0.25, seed=3) == (tr, va)


def test_vocabulary_min_count_and_round_trip():
    v = Vocab.build(["a red square", "a blue square", "a red circle"], "word", min_freq=2)
    assert v.itos[4:] == [" a", " red", " square"]
    assert v.encode("a blue square") == [4, UNK, 6]
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))).itos == v.itos


# --------------------------------------------------------------------------- decoder


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("attention", ["none", "soft"])
@pytest.mark.parametrize("tie", [False, True])
def test_decoder_shapes(cell, attention, tie):
    torch.manual_seed(0)
    B, F, S, T, V = 3, 12, 4, 5, 20
    dec = CaptionDecoder(V, F, cell=cell, attention=attention, embed=8, hidden=16, tie_weights=tie, dropout=0.0).eval()
    feats = torch.randn(B, F) if attention == "none" else torch.randn(B, F, S)
    tgt = torch.randint(4, V, (B, T))
    logits, alphas = dec(feats, tgt, return_attention=True)
    assert logits.shape == (B, T, V)
    assert (alphas is None) == (attention == "none")
    if alphas is not None:
        assert alphas.shape == (B, T, S)
        torch.testing.assert_close(alphas.sum(-1), torch.ones(B, T))
    # teacher forcing equals step-by-step decoding
    mem, state = dec.encode(feats)
    for t in range(T):
        step_logits, state, _ = dec.step(tgt[:, t], state, mem)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-5, rtol=1e-4)


def test_tied_weights_are_one_tensor_and_save_fewer_parameters(tmp_path):
    from transferkit.tasks.caption.model import CaptionModel

    untied = CaptionDecoder(50, 12, embed=8, hidden=16)
    tied = CaptionDecoder(50, 12, embed=8, hidden=16, tie_weights=True)
    assert tied.out.weight is tied.embed.weight
    assert count_parameters(untied) - count_parameters(tied) == 50 * 8
    with torch.no_grad():
        tied.embed.weight[5, 0] = 42.0
    assert float(tied.out.weight.detach()[5, 0]) == 42.0


# --------------------------------------------------------------------------- decoding


def _trained_decoder(attention="none"):
    """A decoder fitted for a few hundred steps to map 4 random image vectors to 4 different captions."""
    torch.manual_seed(0)
    V, F = 12, 6
    dec = CaptionDecoder(V, F, attention=attention, embed=16, hidden=32, dropout=0.0)
    feats = torch.randn(4, F) if attention == "none" else torch.randn(4, F, 3)
    caps = torch.tensor([[4, 5, 6, EOS], [4, 7, 8, EOS], [9, 5, 10, EOS], [11, 7, 6, EOS]])
    tgt_in = torch.cat([torch.ones(4, 1, dtype=torch.long), caps[:, :-1]], 1)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-2)
    for _ in range(40 if attention == "soft" else 60):
        loss = torch.nn.functional.cross_entropy(dec(feats, tgt_in).reshape(-1, V), caps.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return dec.eval(), feats, caps


def test_greedy_learns_and_beam_one_equals_greedy_and_beam_never_worse():
    from transferkit.core.decoding import beam_search, greedy

    dec, feats, caps = _trained_decoder()
    g = greedy(dec, (feats,), 6)
    assert g.tokens[:, :4].tolist() == caps.tolist()
    b1 = beam_search(dec, (feats,), 1, 6)
    assert torch.equal(b1.tokens, g.tokens) and torch.allclose(b1.scores, g.scores)
    # an untrained decoder: beam search (no length normalisation) finds captions at least as probable as greedy
    torch.manual_seed(1)
    raw = CaptionDecoder(30, 6, embed=8, hidden=16, dropout=0.0).eval()
    x = torch.randn(8, 6)
    gs = greedy(raw, (x,), 8).scores
    for k in (2, 3, 5):
        bs = beam_search(raw, (x,), k, 8).scores
        assert bool((bs >= gs - 1e-5).all())


def test_beam_never_emits_unknown_and_n_best_is_ranked():
    from transferkit.core.decoding import beam_search

    torch.manual_seed(0)
    dec = CaptionDecoder(10, 6, embed=8, hidden=16, dropout=0.0).eval()
    with torch.no_grad():
        dec.out.bias[UNK] = 100.0  # the model wants <unk> everywhere
    out = beam_search(dec, (torch.randn(3, 6),), 4, 6, alpha=0.7, n_best=3)
    assert not (out.tokens == UNK).any() and not (out.nbest_tokens == UNK).any()
    assert out.nbest_tokens.shape[:2] == (3, 3)
    assert torch.equal(out.nbest_tokens[:, 0], out.tokens)


def test_soft_attention_decoder_learns():
    from transferkit.core.decoding import greedy

    dec, feats, caps = _trained_decoder("soft")
    g = greedy(dec, (feats,), 6, keep_attention=True)
    assert g.tokens[:, :4].tolist() == caps.tolist()
    assert g.attention.shape[0] == 4 and g.attention.shape[-1] == 3


# --------------------------------------------------------------------------- metrics


def test_bleu_agrees_with_sacrebleu_on_a_hand_made_case():
    import sacrebleu

    hyps = ["a red square on the table", "a blue circle"]
    refs = [["a red square on a table", "the red square is on the table"], ["a blue circle"]]
    got = bleu(hyps, refs)
    want = sacrebleu.corpus_bleu(hyps, [["a red square on a table", "a blue circle"], ["the red square is on the table", None]])
    assert got["bleu4"] == pytest.approx(want.score)
    assert got["bleu1"] == pytest.approx(100.0)  # every hypothesis word occurs in a reference, no brevity penalty


def test_cider_d_hand_worked():
    # df over the two images' references: "a" in both (idf log2 - log2 = 0), every other n-gram in one (idf log 2).
    # image 1: unigrams {a:0, red:L, circle:L} vs {a:0, red:L, square:L} -> cos 1/2; bigrams {a red, red circle}
    # vs {a red, red square} -> 1/2; trigrams 0; 4-grams 0; equal lengths -> 10 * (1/2 + 1/2 + 0 + 0) / 4 = 2.5.
    # image 2: identical, 4-grams absent -> 10 * 3/4 = 7.5.  Mean 5.0.
    assert cider_d(["a red circle", "a blue circle"], [["a red square"], ["a blue circle"]]) == pytest.approx(5.0)
    assert unique_ratio(["a", "a", "b", "c"]) == 0.75


# --------------------------------------------------------------------------- fit, save, load, CLI


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    import os

    from transferkit.tasks.caption.train import CaptionConfig, fit

    root = tmp_path_factory.mktemp("cap")
    os.environ["TRANSFERKIT_CACHE"] = str(root / "cache")
    data = make_shapes(root / "data", n_per=8, size=32)
    cfg = CaptionConfig(encoder="test_efficientnet", weights="none", embed=32, hidden=64, min_count=1, epochs=6,
                        batch_size=16, lr=1e-2, dropout=0.0, precision="32", patience=None, time_budget=None,
                        val_fraction=0.25, device="cpu", beam=3, tie_weights=True, val_images=8)
    result = fit(cfg, data, root / "run")
    return data, root / "run", result


def test_tiny_fit_learns_captions_that_differ_by_image(fitted):
    from transferkit.tasks.caption.captioner import predict

    data, run, result = fitted
    for f in ("config.yaml", "metrics.csv", "heldout.jsonl", "eval.json", "report.html", "model/config.json"):
        assert (run / f).is_file(), f
    imgs = sorted((data / "images").glob("*.png"))
    rows = predict(run, imgs, beam=1)
    assert len({r["caption"] for r in rows}) >= 3
    colour_right = sum(r["caption"].split()[1:2] == [Path(r["path"]).name.split("_")[0]] for r in rows)
    assert colour_right / len(rows) >= 0.8, rows
    assert set(result) >= {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "unique_ratio", "n_images"}
    html = (run / "report.html").read_text()
    assert "captions.png" in html and "curves_bleu4.png" in html


def test_saved_model_captions_in_a_fresh_process_and_keeps_tied_weights(fitted, tmp_path):
    import shutil

    data, run, _ = fitted
    alone = tmp_path / "alone"
    shutil.copytree(run / "model", alone)
    img = sorted((data / "images").glob("*.png"))[0]
    code = (
        "import json, sys; from transferkit.tasks.caption import predict, Captioner; "
        f"c = Captioner.load({str(alone)!r}); d = c.model.decoder; "
        "assert d.out.weight is d.embed.weight; "
        f"print(json.dumps(predict(c, [{str(img)!r}], beam=2)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)[0]
    from transferkit.tasks.caption.captioner import predict

    assert row["caption"] == predict(run, [img], beam=2)[0]["caption"]
    # the serving contract: a loaded TransferModel and (name, PIL image) inputs
    from PIL import Image

    from transferkit.core.modeldir import load

    served = predict(load(alone), [("upload.png", Image.open(img).convert("RGB"))], beam=2)
    assert served[0]["path"] == "upload.png" and served[0]["caption"] == row["caption"]


def test_cli_predict_eval_and_bad_input(fitted, cli, tmp_path, capsys):
    from transferkit.cli.main import main

    data, run, _ = fitted
    img = sorted((data / "images").glob("*.png"))[0]
    p = cli("caption", "predict", run, img, "--json", "--beam", "3", "--n", "2")  # the installed command
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert set(row) >= {"path", "caption", "score", "captions"} and len(row["captions"]) == 2
    capsys.readouterr()
    assert main(["caption", "eval", str(run), str(run / "heldout.jsonl"), "--json", "--beam", "1", "--no-report"]) == 0
    assert set(json.loads(capsys.readouterr().out)) >= {"bleu1", "bleu2", "bleu3", "bleu4", "cider", "unique_ratio", "n_images"}
    for args in (("caption", "fit", tmp_path / "missing", "--out", tmp_path / "r"),
                 ("caption", "predict", run, img, "--beam", "0"),
                 ("caption", "predict", tmp_path, img),
                 ("caption", "eval", run, tmp_path / "nothing.jsonl"),
                 ("caption", "fit", data, "--out", tmp_path / "r2", "--embed", "0")):
        assert main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


def test_region_captions_with_proposals_and_drawing(fitted, tmp_path, capsys):
    from PIL import Image, ImageDraw

    from transferkit.cli.main import main
    from transferkit.tasks.caption.regions import dedupe, iou, selective_search

    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert dedupe([(0, 0, 10, 10), (1, 0, 10, 10), (20, 20, 30, 30)], 0.5) == [(0, 0, 10, 10), (20, 20, 30, 30)]
    img = Image.new("RGB", (96, 48), (10, 10, 10))
    d = ImageDraw.Draw(img)
    d.rectangle((4, 8, 40, 44), fill=(220, 40, 40))
    d.ellipse((56, 8, 92, 44), fill=(50, 80, 230))
    path = tmp_path / "two.png"
    img.save(path)
    boxes = selective_search(img, max_regions=4)
    assert 1 <= len(boxes) <= 4
    assert all(iou(a, b) <= 0.5 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    data, run, _ = fitted
    capsys.readouterr()
    assert main(["caption", "predict", str(run), str(path), "--regions", "--max-regions", "3", "--json",
                 "--draw-dir", str(tmp_path / "drawn")]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert 1 <= len(row["regions"]) <= 3 and all(len(r["xyxy"]) == 4 and r["caption"] for r in row["regions"])
    assert Path(row["drawing"]).is_file() and Image.open(row["drawing"]).size == (96, 48)
