"""``seq2seq fit | translate | eval``: encoder-decoder translation (character or word level)."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "seq2seq",
        help="train and use sequence-to-sequence translation models",
        description="Encoder-decoder (LSTM/GRU, optional attention) translation of short texts, trained on "
        "'source<TAB>target' lines; saved models carry their vocabularies and translate by themselves.",
    )
    cmds = group.add_subparsers(dest="seq2seq_command", metavar="COMMAND")

    p = cmds.add_parser(
        "fit",
        help="train a model on source<TAB>target pairs",
        description="Train on PAIRS.tsv (one 'source<TAB>target' pair per line, UTF-8; extra columns ignored). "
        "A seeded tenth of the source sentences is held out for validation, early stopping and the final "
        "evaluation. With no options: the best configuration measured on English-French within 30 CPU minutes "
        "(word level, bidirectional LSTM 256, dot attention, beam 5, --time-limit 28).",
    )
    p.add_argument("data", metavar="PAIRS.tsv", help="training pairs")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (refuses to overwrite one unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint")
    from transferkit.core.config import add_config_args
    from transferkit.tasks.seq2seq.train import Seq2seqConfig

    add_config_args(p, Seq2seqConfig, exclude=("workers",))  # pairs live in memory: no loader workers
    p.add_argument("--json", action="store_true", help="print the held-out evaluation as JSON")
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "translate",
        help="translate texts with a trained model",
        description="Translate the given texts (or the lines of --file) with a model or run directory.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run directory (or its model/ folder)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to translate")
    p.add_argument("--file", metavar="IN.txt", help="translate every line of this UTF-8 file")
    p.add_argument("--out", metavar="OUT.txt", help="write translations here (one per line) instead of printing them")
    _decoding(p)
    p.add_argument("--json", action="store_true", help='one JSON object per text: {"source", "translation", "score"}')
    p.set_defaults(func=run_translate)

    p = cmds.add_parser(
        "eval",
        help="BLEU, chrF, exact match and token accuracy on held-out pairs",
        description="Translate the sources of PAIRS.tsv and score them against the targets (sacrebleu BLEU and "
        "chrF, exact match, teacher-forced token accuracy); writes report.html (curves, sample translations, "
        "attention maps) into RUN_DIR. A run's own held-out pairs are in RUN_DIR/heldout.tsv.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="run directory (or its model/ folder)")
    p.add_argument("data", metavar="PAIRS.tsv", help="source<TAB>reference pairs")
    _decoding(p)
    p.add_argument("--max-pairs", type=int, default=None, metavar="N", help="score only the first N pairs")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html / eval.json")
    p.add_argument("--json", action="store_true", help='print {"bleu", "chrf", "exact", "token_acc", ...}')
    p.set_defaults(func=run_eval)
    group.set_defaults(func=lambda args: _group_help(group))


def _group_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=None, metavar="K", help="beam size, 1 = greedy (default: the model's own)")
    p.add_argument("--max-len", type=int, default=None, metavar="N", help="most output tokens (default: the model's own)")
    p.add_argument("--batch-size", type=int, default=64, help="texts decoded together (default: 64)")


def _summary(r: dict) -> str:
    return (f"BLEU {r['bleu']:.2f}  chrF {r['chrf']:.2f}  exact {r['exact']:.1%}  token accuracy {r['token_acc']:.3f}"
            f"  ({r['pairs']} pairs, beam {r['beam']})")


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.cli._fit import print_fit_result, resolve_fit_config
    from transferkit.tasks.seq2seq.train import Seq2seqConfig, fit

    cfg = resolve_fit_config(Seq2seqConfig, args)
    r = fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    print_fit_result(r, _summary, args.json)
    return 0


def _check(args: argparse.Namespace) -> None:
    from transferkit.errors import TransferkitError

    if args.beam is not None and args.beam < 1:
        raise TransferkitError("--beam must be at least 1.")
    if args.max_len is not None and args.max_len < 1:
        raise TransferkitError("--max-len must be at least 1.")
    if args.batch_size < 1:
        raise TransferkitError("--batch-size must be at least 1.")


def run_translate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferkit.core.modeldir import atomic_write_text
    from transferkit.errors import TransferkitError
    from transferkit.tasks.seq2seq.translator import Translator

    _check(args)
    texts = list(args.texts)
    if args.file:
        f = Path(args.file)
        if not f.is_file():
            raise TransferkitError(f"No such file: {f}")
        try:
            texts.extend(f.read_text(encoding="utf-8-sig").splitlines())
        except UnicodeDecodeError as err:
            raise TransferkitError(f"{f} is not UTF-8 text (byte {err.start}).") from None
    if not texts:
        raise TransferkitError("Give texts to translate, or --file IN.txt.")
    tr = Translator.load(args.model)
    results = tr.translate(texts, beam=args.beam, max_len=args.max_len, batch_size=args.batch_size,
                           progress=len(texts) > 200)
    if args.json:
        lines = [json.dumps(r, ensure_ascii=False) for r in results]
    elif args.out:
        lines = [r["translation"] for r in results]
    else:
        lines = [f"{r['source']}\t{r['translation']}" for r in results] if len(texts) > 1 else [results[0]["translation"]]
    text = "".join(line + "\n" for line in lines)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {len(results)} translations to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.seq2seq.translator import evaluate

    _check(args)
    r = evaluate(args.model, args.data, beam=args.beam, max_len=args.max_len, max_pairs=args.max_pairs,
                 batch_size=args.batch_size, report=args.report)
    if args.json:
        print(json.dumps(r))
    else:
        print(_summary(r))
    return 0
