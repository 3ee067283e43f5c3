"""``gan fit|sample|translate|eval``: DCGAN and pix2pix, with offline FID/KID."""

from __future__ import annotations

import argparse
import json
import sys

from transferkit.core.engine import is_rank_zero

ORDER = 45

DATA_HELP = ("dcgan: an image folder (class subfolders give --conditional its labels), an MNIST IDX folder or an "
             "Omniglot .zip; pix2pix: A/ and B/ folders with matching names, side-by-side A|B images, or photos "
             "with --edges")


def register(sub: argparse._SubParsersAction) -> None:
    from transferkit.core.config import add_config_args
    from transferkit.tasks.gan.config import GANConfig

    group = sub.add_parser(
        "gan",
        help="generative adversarial networks: DCGAN (optionally conditional) and pix2pix; offline FID/KID",
        description="Train a DCGAN (random numbers -> images, optionally class-conditional) or pix2pix "
        "(image -> image, e.g. edges -> photo), sample or translate with it, and measure it with FID/KID on "
        "features that work offline (EfficientNet-Lite0 by default).",
    )
    cmds = group.add_subparsers(dest="gan_command", metavar="COMMAND")
    group.set_defaults(func=lambda a: group.print_help() or 2)

    p = cmds.add_parser(
        "fit",
        help="train a GAN; writes a run folder with report.html, sample grids per epoch and model/",
        description="Train on DATA with two optimisers stepped in turn (discriminator, then generator). "
        "Examples: `transferkit gan fit mnist/ --out runs/gan --kind dcgan`; "
        "`... fit mnist/ --out runs/cgan --kind dcgan --conditional`; "
        "`... fit photos/ --out runs/p2p --kind pix2pix --edges`.",
    )
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (refused if it holds a run)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN_DIR")
    p.add_argument("--json", action="store_true", help="print the final figures as JSON")
    add_config_args(p, GANConfig)
    p.set_defaults(func=run_fit)

    p = cmds.add_parser(
        "sample",
        help="DCGAN: generate images (a grid, one PNG per sample, or a latent-space walk)",
        description="A .png OUT gets one grid; a folder OUT gets one PNG per sample. Conditional models give one "
        "row per class, or only --label.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="GAN run (or model) folder")
    p.add_argument("--n", type=int, default=64, help="how many samples (default 64); conditional models share them out over one row per class, at least one each")
    p.add_argument("--out", required=True, metavar="PATH", help="a .png file (one grid) or a folder (one PNG each)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the latent points (default 0)")
    p.add_argument("--interpolate", action="store_true", help="a strip of --n images walking in a straight line "
                   "between two random latent points")
    p.add_argument("--label", help="conditional models: only this class (name or index)")
    p.set_defaults(func=run_sample)

    p = cmds.add_parser(
        "translate",
        help="pix2pix: translate images (an --edges model takes photos, or drawings with --sketch)",
        description="Translate each input image with a pix2pix model; writes OUT/<name>.png per input.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="pix2pix run (or model) folder")
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the translations")
    p.add_argument("--sketch", action="store_true", help="edges models: the inputs are already drawings "
                   "(black lines on white), not photos to take the edges of")
    p.set_defaults(func=run_translate)

    p = cmds.add_parser(
        "eval",
        help="FID and KID (offline features) with the real-vs-real floor; pix2pix adds L1, PSNR, SSIM",
        description="FID and KID of generated images against DATA's images, on the features of --features "
        "(default: the run's, EfficientNet-Lite0 unless set). Not comparable with Inception-FID figures. "
        "The floor is the FID between two halves of the real images, at the same sample sizes. "
        "On the run's own DATA only its held-out images are used.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="GAN run (or model) folder")
    p.add_argument("data", metavar="DATA", help="real images (pix2pix: pairs), in any format fit takes")
    p.add_argument("--features", metavar="MODEL", help="feature network: a backbone name or a model directory, "
                   "e.g. a LeNet-5 from `transferkit arch compare lenet5 --data mnist/ --out runs/lenet` "
                   "(runs/lenet/lenet5/model)")
    p.add_argument("--feature-size", type=int, metavar="N", help="side fed to the feature network (default: its own)")
    p.add_argument("--max-images", type=int, default=2000, help="real images used at most (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples and the halves (default 0)")
    p.add_argument("--json", action="store_true", help='print {"fid", "kid", "fid_floor", "n_real", "n_fake", ...}')
    p.set_defaults(func=run_eval)


def run_fit(args: argparse.Namespace) -> int:
    from transferkit.core.config import resolve
    from transferkit.tasks.gan import fit
    from transferkit.tasks.gan.config import GANConfig

    cfg = resolve(GANConfig, args)
    run = fit(cfg, args.data, args.out, resume=args.resume)
    if not is_rank_zero():
        return 0  # DDP: another rank trained alongside; rank 0 reports
    res = json.loads((run / "metrics.json").read_text())
    if args.json:
        print(json.dumps(res))
        return 0
    line = f"{res['steps']} generator steps in {res['train_seconds']:.0f} s"
    if "fid" in res:
        line += (f"; held-out FID {res['fid']:.3f} (real-vs-real floor {res['fid_floor']:.3f}, {res['n_fake']} "
                 f"samples, {res['features']}), KID {res['kid']:.4f}")
    if "ssim" in res:
        line += f"; L1 {res['l1']:.4f}, PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.3f}"
    print(line)
    if res.get("collapse"):
        print(f"warning: the discriminator won from step {res['collapse']['step'] - res['collapse']['steps'] + 1}; "
              "see report.html")
    print(f"wrote {run}/model and {run}/report.html")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from transferkit.tasks.gan import sample

    paths = sample(args.run, n=args.n, out=args.out, seed=args.seed, label=args.label, interpolate=args.interpolate)
    print(f"wrote {paths[0]}" if len(paths) == 1 else f"wrote {len(paths)} images to {paths[0].parent}")
    return 0


def run_translate(args: argparse.Namespace) -> int:
    from transferkit.tasks.gan import translate

    paths = translate(args.run, args.images, args.out, sketch=args.sketch)
    print(f"wrote {len(paths)} translation(s) to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from transferkit.tasks.gan import evaluate

    res = evaluate(args.run, args.data, features=args.features, feature_size=args.feature_size,
                   max_images=args.max_images, seed=args.seed)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"FID ({res['features']}): {res['fid']:.4f}   (real vs real floor {res['fid_floor']:.4f})")
    print(f"KID: {res['kid']:.5f} +- {res['kid_std']:.5f}   (floor {res['kid_floor']:.5f})")
    print(f"samples: {res['n_real']} real, {res['n_fake']} generated ({res['split']} images of DATA)")
    if "ssim" in res:
        print(f"L1 {res['l1']:.4f}   PSNR {res['psnr']:.2f} dB   SSIM {res['ssim']:.4f}")
    print("(not comparable with Inception-FID figures)", file=sys.stderr)
    return 0
