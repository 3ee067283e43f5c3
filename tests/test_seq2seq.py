"""Seq2seq: vocabularies, the split, decoding (greedy = beam K=1, exhaustive beam, padding), a tiny
learnable task end to end (fit -> save -> translate in a fresh process -> eval), and bad input."""

from __future__ import annotations

import itertools
import json
import random
import shutil

import pytest
import torch

from transferkit.errors import TransferkitError
from transferkit.tasks.seq2seq.data import BucketBatchSampler, pad_batch, split_pairs
from transferkit.tasks.seq2seq.decode import BANNED, beam_search, greedy
from transferkit.tasks.seq2seq.model import Seq2Seq
from transferkit.tasks.seq2seq.vocab import EOS, UNK, Vocab, tokenize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks run fastest on one thread (and leave the other core to the rest of the suite)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # for CLI subprocesses

# --------------------------------------------------------------------------- vocabularies


def test_char_vocab_round_trip_and_unknown_characters():
    v = Vocab.build(["Go.", "Run!", "Va !"], "char")
    assert v.decode(v.encode("Go. Run!")) == "Go. Run!"
    ids = v.encode("Gox!")  # 'x' was never seen
    assert ids[2] == UNK and UNK not in ids[:2] + ids[3:]
    assert v.decode(ids) == "Go<unk>!"
    assert v.decode(v.encode("Run", bos=True, eos=True) + [5, 6]) == "Run"  # stops at </s>
    assert Vocab.from_dict(json.loads(json.dumps(v.to_dict()))).itos == v.itos


def test_word_vocab_keeps_spacing_and_punctuation():
    texts = ["Va !", "Je l'ai vu.", "Où est-il ?", "C'est   à  moi."]
    for t in texts:
        assert "".join(tokenize(t, "word")).removeprefix(" ") == " ".join(t.split())
    v = Vocab.build(texts, "word")
    for t in texts:
        assert v.decode(v.encode(t)) == " ".join(t.split())
    assert tokenize("l'homme !", "word") == [" l", "'", "homme", " !"]
    assert v.decode(v.encode("Je l'ai mangé.")) == "Je l'ai <unk>."
    assert v.encode("") == []


def test_min_freq_and_nfc_normalisation():
    v = Vocab.build(["a b", "a c", "a b"], "word", min_freq=2)
    assert " a" in v.stoi and " b" in v.stoi and " c" not in v.stoi
    decomposed = "e\u0301t\u00e9"  # 'é' as e + combining accent, then precomposed
    cv = Vocab.build(["été"], "char")
    assert UNK not in cv.encode(decomposed)


# --------------------------------------------------------------------------- split and batches


def test_split_is_seeded_by_source_sentence_and_stable_under_max_pairs():
    pairs = [(f"s{i // 2}", f"t{i}") for i in range(400)]  # every source has two translations
    keep, held = split_pairs(pairs, 0.1, seed=3)
    assert sorted(keep + held) == list(range(400))
    held_src = {pairs[i][0] for i in held}
    assert held_src.isdisjoint(pairs[i][0] for i in keep)  # a source never on both sides
    assert 0.03 < len(held) / 400 < 0.2
    assert split_pairs(pairs, 0.1, seed=3) == (keep, held)
    assert split_pairs(pairs, 0.1, seed=4) != (keep, held)
    _, held_small = split_pairs(pairs[:200], 0.1, seed=3)  # the first 200 pairs' held-out part ...
    assert set(held_small) == {i for i in held if i < 200}  # ... is the larger set's, cut to them
    k2, h2 = split_pairs(pairs[:4], 0.1, seed=0)
    assert k2 and h2  # tiny sets still get both parts
    with pytest.raises(TransferkitError):
        split_pairs([("a", "b"), ("a", "c")], 0.1, seed=0)


def test_bucket_sampler_covers_everything_with_little_padding():
    rng = random.Random(0)
    lengths = [(rng.randint(1, 30), rng.randint(1, 30)) for _ in range(1000)]
    s = BucketBatchSampler(lengths, 32, shuffle=True, seed=0, pool=10)
    batches = list(s)
    assert len(batches) == len(s)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    spread = sum(max(lengths[i][0] for i in b) - min(lengths[i][0] for i in b) for b in batches) / len(batches)
    assert spread <= 5  # sorted pools: similar source lengths in a batch (random batches: about 27)
    assert [b for b in BucketBatchSampler(lengths, 32, True, seed=0, pool=10)] == batches  # seeded
    assert list(s) != batches  # a new order each epoch


# --------------------------------------------------------------------------- decoding on untrained networks


def _net(attention: str, cell: str = "lstm", bidirectional: bool = True, vocab: int = 12, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(vocab, vocab, cell=cell, hidden=16, layers=2 if cell == "gru" else 1, attention=attention,
                   embed=8, bidirectional=bidirectional).eval()


def _sources(n: int = 7, vocab: int = 12, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g) for _ in range(n)]


@pytest.mark.parametrize("attention,cell", [("none", "lstm"), ("dot", "lstm"), ("additive", "lstm"), ("dot", "gru")])
def test_padding_never_changes_a_result(attention, cell):
    net = _net(attention, cell)
    seqs = _sources()
    src, src_len = pad_batch(seqs)
    wide = torch.cat([src, torch.zeros(len(seqs), 5, dtype=torch.long)], 1)  # extra padding columns
    batched = greedy(net, wide, src_len, max_len=12)
    beamed = beam_search(net, wide, src_len, k=3, max_len=12)
    tgt_in = torch.randint(4, 12, (len(seqs), 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tf_batched = net(wide, src_len, tgt_in)
    for i, s in enumerate(seqs):
        alone_src, alone_len = s.unsqueeze(0), torch.tensor([len(s)])
        alone = greedy(net, alone_src, alone_len, max_len=12)
        n = alone.tokens.size(1)
        assert batched.tokens[i, :n].tolist() == alone.tokens[0].tolist()
        assert batched.scores[i].item() == pytest.approx(alone.scores[0].item(), abs=1e-4)
        assert beam_search(net, alone_src, alone_len, k=3, max_len=12).tokens[0].tolist() == \
            beamed.tokens[i, : beam_search(net, alone_src, alone_len, k=3, max_len=12).tokens.size(1)].tolist()
        with torch.no_grad():
            torch.testing.assert_close(net(alone_src, alone_len, tgt_in[i : i + 1])[0], tf_batched[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["none", "dot", "additive"])
def test_beam_of_one_is_greedy(attention):
    for seed in range(3):
        net = _net(attention, seed=seed)
        src, src_len = pad_batch(_sources(seed=seed))
        g = greedy(net, src, src_len, max_len=15)
        b = beam_search(net, src, src_len, k=1, max_len=15)
        assert b.tokens.tolist() == g.tokens.tolist()
        torch.testing.assert_close(b.scores, g.scores)


def _sequence_logprob(net: Seq2Seq, src: torch.Tensor, seq: list[int]) -> float:
    """Log-probability of ``seq`` under the same rules as the decoders (banned tokens impossible)."""
    with torch.no_grad():
        mem, state = net.encode(src.unsqueeze(0), torch.tensor([len(src)]))
        tok, total = torch.tensor([1]), 0.0
        for t in seq:
            logits, state, _ = net.step(tok, state, mem)
            total += torch.log_softmax(logits.float(), -1)[0, t].item()
            tok = torch.tensor([t])
    return total


def test_wide_beam_finds_the_most_probable_sequence():
    vocab, max_len = 6, 3  # two ordinary tokens: EOS or one of them at each step -> 3**3 paths at most
    net = _net("dot", vocab=vocab, seed=5)
    allowed = [t for t in range(vocab) if t not in BANNED]
    for src in _sources(4, vocab=vocab, seed=2):
        best = max(
            (_sequence_logprob(net, src, list(p[: p.index(EOS) + 1] if EOS in p else p)), p[: p.index(EOS) + 1] if EOS in p else p)
            for p in itertools.product(allowed, repeat=max_len)
        )
        got = beam_search(net, src.unsqueeze(0), torch.tensor([len(src)]), k=27, max_len=max_len)
        ids = got.tokens[0].tolist()
        ids = ids[: ids.index(EOS) + 1] if EOS in ids else ids
        assert tuple(ids) == tuple(best[1])
        assert got.scores[0].item() == pytest.approx(best[0], abs=1e-4)


# --------------------------------------------------------------------------- a tiny task, end to end


def _reverse_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = "".join(rng.choice("abcde") for _ in range(rng.randint(2, 5)))
        out.append((s, s[::-1]))
    return out


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
    """A model trained for a few seconds to reverse short strings (char level, dot attention)."""
    from transferkit.tasks.seq2seq.train import Seq2seqConfig, fit

    root = tmp_path_factory.mktemp("s2s")
    data = root / "reverse.tsv"
    data.write_text("".join(f"{s}\t{t}\n" for s, t in _reverse_pairs(500, 0)), encoding="utf-8")
    cfg = Seq2seqConfig(level="char", hidden=48, embed=24, attention="dot", dropout=0.0, label_smoothing=0.0, lr=0.01,
                        batch_size=32, epochs=14, patience=None, time_limit=None, beam=1, device="cpu", seed=0)
    result = fit(cfg, data, root / "run")
    return root, result


def test_tiny_task_learns_and_translates_from_a_lone_model_dir(reverse_run, cli):
    root, result = reverse_run
    assert result["exact"] >= 0.9, result  # greedy, on held-out strings never seen in training
    assert result["chrf"] >= 90
    run = root / "run"
    for name in ("config.yaml", "metrics.csv", "heldout.tsv", "report.html", "eval.json", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "Sample translations" in html and "attention.png" in html and "curves_chrf.png" in html
    lone = root / "lone"  # only config.json + model.safetensors
    shutil.copytree(run / "model", lone)
    assert sorted(p.name for p in lone.iterdir()) == ["config.json", "model.safetensors"]
    tests = ["abc", "edcab", "aab", "ba"]
    proc = cli("seq2seq", "translate", lone, *tests, "--json", check=True, env=ONE_THREAD)  # a fresh process
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["source"] for r in rows] == tests
    assert sum(r["translation"] == s[::-1] for r, s in zip(rows, tests)) >= 3
    # unknown characters never crash
    proc = cli("seq2seq", "translate", lone, "abz?", check=True, env=ONE_THREAD)
    assert proc.stdout.strip()


def test_translate_batched_equals_alone_and_beam1_equals_greedy(reverse_run):
    from transferkit.tasks.seq2seq.translator import Translator

    root, _ = reverse_run
    tr = Translator.load(root / "run")
    texts = [s for s, _ in _reverse_pairs(40, 7)] + ["a", "abcdeabcde"]
    batched = tr.translate(texts, beam=1, batch_size=64)
    alone = [tr.translate([t], beam=1)[0] for t in texts]
    assert [r["translation"] for r in batched] == [r["translation"] for r in alone]
    small = tr.translate(texts, beam=1, batch_size=5)
    assert [r["translation"] for r in small] == [r["translation"] for r in batched]
    assert [r["score"] for r in small] == pytest.approx([r["score"] for r in batched], abs=1e-4)
    beam1 = [r["translation"] for r in tr.translate(texts, beam=1)]
    from transferkit.tasks.seq2seq.decode import beam_search

    # the beam implementation with K=1 (forced, not the greedy shortcut) gives the same strings
    src_ids = [torch.tensor(tr.src_vocab.encode(t)) for t in texts]
    src, src_len = pad_batch(src_ids)
    dec = beam_search(tr.net, src, src_len, k=1, max_len=tr.max_len)
    assert [tr.tgt_vocab.decode(ids) for ids in dec.tokens.tolist()] == beam1
    beam4 = tr.translate(texts, beam=4)
    assert all(r["score"] >= -1e9 for r in beam4)
    assert tr.translate(["", "ab"], beam=2)[0]["translation"] == ""


def test_eval_cli_json_and_load_api(reverse_run, cli):
    import transferkit

    root, _ = reverse_run
    run = root / "run"
    proc = cli("seq2seq", "eval", run, run / "heldout.tsv", "--json", "--beam", "3", "--no-report", check=True, env=ONE_THREAD)
    r = json.loads(proc.stdout)
    assert {"bleu", "chrf", "exact", "token_acc"} <= set(r)
    assert r["beam"] == 3 and 0.9 <= r["token_acc"] <= 1.0 and r["chrf"] >= 90
    m = transferkit.load(run)
    assert m.task == "seq2seq" and m.config["vocab"]["source"]["level"] == "char"


# --------------------------------------------------------------------------- bad input


def test_bad_lines_are_skipped_and_counted(tmp_path, cli):
    lines = [f"{s}\t{t}" for s, t in _reverse_pairs(40, 1)]
    lines[3] = ""  # empty line
    lines[5] = "no tab here"
    lines[7] = "   "
    lines[9] = "x" * 80 + "\t" + "y"  # over --max-chars 50
    lines[11] = "\tonly target"  # empty source
    data = tmp_path / "bad.tsv"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = cli("seq2seq", "fit", data, "--out", tmp_path / "run", "--level", "char", "--hidden", "8", "--embed", "4",
               "--epochs", "1", "--max-chars", "50", "--beam", "1", "--device", "cpu", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 empty lines, 1 lines without tab, 1 empty sides, 1 over long pairs" in proc.stderr
    cfg = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert cfg["training"]["skipped"]["lines_without_tab"] == 1
    assert sum(cfg["training"][k] for k in ("pairs_train", "pairs_heldout")) == 35


def test_clear_errors(tmp_path, cli):
    nothing = tmp_path / "nothing.tsv"
    nothing.write_text("\n\nno tabs at all\n", encoding="utf-8")
    proc = cli("seq2seq", "fit", nothing, "--out", tmp_path / "r")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing created for unusable data
    proc = cli("seq2seq", "translate", tmp_path / "missing", "hello")
    assert proc.returncode == 2 and "not a transferkit model directory" in proc.stderr
    proc = cli("seq2seq", "fit", nothing, "--out", tmp_path / "r", "--attention", "cosine")
    assert proc.returncode == 2
    proc = cli("seq2seq", "fit", nothing, "--out", tmp_path / "r", "--hidden", "0")
    assert proc.returncode == 2 and "--hidden" in proc.stderr


@pytest.mark.shared_data
def test_cli_on_the_english_french_pairs(shared_data, tmp_path, cli):
    """fit (with its held-out evaluation) and translate on the real pairs (a tiny model, one epoch: plumbing, not quality)."""
    pairs = shared_data / "tatoeba-fra-eng" / "eng-fra.tsv"
    run = tmp_path / "fr"
    proc = cli("seq2seq", "fit", pairs, "--out", run, "--max-pairs", "400", "--hidden", "16", "--embed", "8",
               "--epochs", "1", "--beam", "2", "--device", "cpu", "--json", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["pairs"] == sum(1 for _ in (run / "heldout.tsv").open(encoding="utf-8")) > 10
    inp = tmp_path / "in.txt"
    inp.write_text("Go.\nI'm cold.\n\nCafé ? Ça va\n", encoding="utf-8")
    proc = cli("seq2seq", "translate", run, "--file", inp, "--out", tmp_path / "out.txt", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) == 4


def test_config_validation_in_process():
    from transferkit.tasks.seq2seq.train import Seq2seqConfig

    for bad in ({"threads": 0}, {"time_limit": 0.0}, {"dropout": 1.0}, {"val_fraction": 1.0}, {"beam": 0}):
        with pytest.raises(TransferkitError):
            Seq2seqConfig(**bad).validate()
    cfg = Seq2seqConfig()
    assert cfg.network()["embed"] == cfg.hidden and Seq2seqConfig(level="char").network()["embed"] == 128
    assert cfg.min_count() == 2 and Seq2seqConfig(level="char").min_count() == 1
