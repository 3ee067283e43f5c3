"""``autoencoder fit|eval|decode|finetune``: unsupervised feature learning on images."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 40

DATA_HELP = "'digits' (embedded 8x8 digits), an MNIST IDX folder, or an image folder (class subfolders become labels)"


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.autoencoder.config import AEConfig, FinetuneConfig

    group = sub.add_parser(
        "autoencoder",
        help="train autoencoders (dense, conv, denoising, sparse, stacked), evaluate, decode, fine-tune",
        description="Learn features without labels: dense, convolutional, denoising, sparse and stacked "
        "(greedy layer-wise) autoencoders; reconstruction vs PCA; latent-plane pictures; classifier fine-tuning.",
    )
    cmds = group.add_subparsers(dest="ae_command", metavar="COMMAND")
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = cmds.add_parser(
        "fit",
        help="train an autoencoder; writes a run folder with report.html and model/",
        description="Train an autoencoder on DATA (a seeded part is held out for validation and pictures). "
        "Examples: `transferkit autoencoder fit digits --out runs/ae --kind conv --latent 2`; "
        "`... fit mnist/ --out runs/sae --kind stacked --layers 500,250,30`; "
        "`... fit photos/ --out runs/col --kind conv --colorize`.",
    )
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (refused if it holds a run)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR")
    add_config_args(p, AEConfig)
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "eval",
        help="reconstruction MSE, PSNR and the PCA baseline on DATA",
        description="Reconstruction MSE per pixel, PSNR, and the MSE of PCA with as many components as the code, "
        "fitted on the run's training images. On the run's own DATA only its held-out images are used.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="autoencoder run (or model) folder")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--split", choices=("auto", "all"), default="auto",
                   help="auto: the held-out images when DATA is the training data, else all; all: every image")
    p.add_argument("--json", action="store_true", help='print {"mse": ..., "pca_mse": ..., "psnr": ...} (and more keys)')
    p.set_defaults(func=run_eval)

    p = cmds.add_parser(
        "decode",
        help="decode one point of the latent space to an image",
        description="Decode a code vector (e.g. --z 0.5,-1.2 for a 2-D code) to a PNG of the model's image size.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="autoencoder run (or model) folder")
    p.add_argument("--z", required=True, help="the code: as many comma-separated numbers as the latent size")
    p.add_argument("--out", required=True, metavar="IMG.png", help="PNG file to write")
    p.add_argument("--scale", type=int, default=1, help="enlarge the image this many times (nearest; default: 1)")
    p.set_defaults(func=run_decode)

    p = cmds.add_parser(
        "finetune",
        help="classifier on a (stacked) autoencoder's encoder: head on the frozen stack, then fine-tune all",
        description="The five steps: take the pretrained encoder, freeze it, add a linear head, train the head, "
        "then unfreeze everything and fine-tune with a lower learning rate. Prints the test accuracy.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="autoencoder run folder (e.g. from --kind stacked)")
    p.add_argument("data", metavar="LABELLED_DATA", help="labelled: 'digits', an MNIST folder with labels, or class folders")
    p.add_argument("--out", required=True, metavar="CLS_DIR", help="run folder for the classifier")
    p.add_argument("--json", action="store_true", help="print the accuracies as JSON")
    add_config_args(p, FinetuneConfig)
    p.set_defaults(func=run_finetune)


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.core.config import resolve
    from transferkit.tasks.autoencoder import fit
    from transferkit.tasks.autoencoder.config import AEConfig

    cfg = resolve(AEConfig, args)
    run = fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    res = json.loads((run / "metrics.json").read_text())
    line = f"held-out MSE {res['mse']:.5f} (PSNR {res['psnr']:.2f} dB)" if res["split"] == "held-out" else \
        f"training MSE {res['mse']:.5f}"
    if res.get("pca_mse") is not None:
        line += f", PCA-{json.loads((run / 'model' / 'config.json').read_text())['latent']} {res['pca_mse']:.5f}"
        line += f" (ratio {res['ratio']:.3f})"
    if "denoised_mse" in res and "noisy_mse" in res:
        line += f"; noisy input {res['noisy_mse']:.5f} -> denoised {res['denoised_mse']:.5f}"
    print(line)
    print(f"wrote {run}/model and {run}/report.html")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.autoencoder import evaluate

    res = evaluate(args.run, args.data, split=args.split)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"images:      {res['n']} ({res['split']})")
    print(f"MSE/pixel:   {res['mse']:.6f}")
    print(f"PSNR:        {res['psnr']:.2f} dB")
    if res.get("pca_mse") is not None:
        print(f"PCA MSE:     {res['pca_mse']:.6f}  (autoencoder / PCA = {res['ratio']:.3f})")
    print(f"mean image:  {res['mean_image_mse']:.6f}")
    if "denoised_mse" in res:
        if "noisy_mse" in res:
            print(f"noisy input: {res['noisy_mse']:.6f}")
        print(f"denoised:    {res['denoised_mse']:.6f}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from transferkit.tasks.autoencoder import decode

    path = decode(args.run, args.z, args.out, scale=args.scale)
    print(f"wrote {path}")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from transferkit.core.config import resolve
    from transferkit.tasks.autoencoder import finetune
    from transferkit.tasks.autoencoder.config import FinetuneConfig

    cfg = resolve(FinetuneConfig, args)
    out = finetune(args.run, args.data, args.out, cfg)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    res = json.loads((out / "metrics.json").read_text())
    if args.json:
        print(json.dumps(res))
        return 0
    if "accuracy_head" in res:
        print(f"test accuracy after step 4 (head): {res['accuracy_head']:.4f}")
    print(f"test accuracy after step 5 (fine-tuned): {res['accuracy']:.4f}  "
          f"({res['n_train']} labelled training images, {res['n_test']} test images)")
    print(f"wrote {out}/model and {out}/report.html", file=sys.stdout)
    return 0
