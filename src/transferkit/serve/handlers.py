"""What ``transferkit serve`` can serve: task name -> handler.

A handler is loaded once at start (models are only read, never written) and
then answers batches.  Its three steps split the work the way a service needs:

* ``prepare(inp)`` turns one request input (uploaded bytes or text) into what
  the network eats; it runs on the request's thread, so decoding happens in
  parallel with inference, and a bad upload fails alone (400) before it can
  spoil a batch;
* ``run(prepared_list)`` runs one batch through the network (the
  :class:`~transferkit.serve.batching.Batcher` groups concurrent requests);
* the results are the JSON objects the task's CLI prints with ``--json``.

Which handler a model directory gets: a novelty run (``novelty.json``) gets
:class:`NoveltyHandler`; otherwise its ``config.json`` task is looked up in
:data:`HANDLERS`; a task that is not listed but whose package exposes the
serving contract ``transferkit.tasks.<task>.predict(model, inputs, **opts) ->
list[dict]`` gets :class:`ContractHandler`; anything else is refused at start
with one line saying it cannot be served yet.
"""

from __future__ import annotations

import base64
import importlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from transferkit.errors import TransferkitError

# the JSON a handler's run() returns for one input
Result = dict[str, Any]
MAX_ASPECT = 50  # longest side / shortest side of an accepted upload


@dataclass
class Input:
    """One input of a request: image bytes or text, the name it came with, and request options."""

    name: str = "upload"
    data: bytes | None = None
    text: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ServeOptions:
    """Start-up options that handlers may need.

    Attributes:
        device / engine: as for ``transferkit predict``.
        max_upload_bytes: largest accepted image (also checked on the raw request).
        max_pixels: largest decoded image, width x height (None: Pillow's limit).
        galleries: model name (or ``*`` for all) -> gallery folder, for Siamese verification.
    """

    device: str = "auto"
    engine: str = "auto"
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int | None = None
    galleries: dict[str, str] = field(default_factory=dict)


class Handler:
    """Base class: a loaded model that answers batches."""

    task = "?"
    kind = "image"  # what a request sends: image, text, or generate (JSON options only)

    def __init__(self, name: str, path: Path, config: dict[str, Any], opts: ServeOptions):
        self.name, self.path, self.config, self.opts = name, path, config, opts

    def info(self) -> dict[str, Any]:
        """What ``GET /models`` says about the model."""
        pre = self.config.get("preprocessing") or {}
        return {"name": self.name, "task": self.task, "input": self.kind,
                "classes": list(self.config.get("class_names") or []) or None,
                "input_size": pre.get("input_size")}

    def decode(self, inp: Input, draft_size: tuple[int, int] | None = None):
        """The uploaded image as RGB, through the same checks as files (:func:`decode_image_bytes`)."""
        from transferkit.core.images import decode_image_bytes

        if inp.data is None:
            raise TransferkitError(f"Model {self.name!r} takes an image: upload one (multipart field 'file', "
                                   "or JSON {\"image\": BASE64}).")
        img = decode_image_bytes(inp.data, inp.name, draft_size, self.opts.max_upload_bytes, self.opts.max_pixels)
        w, h = img.size
        if max(w, h) > MAX_ASPECT * min(w, h):  # resizing the short side would blow a 1 x 60,000 strip up to gigapixels
            raise TransferkitError(f"{inp.name}: a {w}x{h} image is too elongated (more than {MAX_ASPECT}:1) to read.")
        return img

    def prepare(self, inp: Input) -> Any:
        raise NotImplementedError

    def run(self, items: Sequence[Any]) -> list[Result]:
        raise NotImplementedError


# --------------------------------------------------------------------------- classifiers


class ClassifierHandler(Handler):
    """Any model with class names (pretrained, classify, arch, an autoencoder's fine-tuned classifier):
    ``{"path", "top": [{"label", "prob"}]}`` as ``transferkit predict --json``, through the same
    :class:`~transferkit.core.inference.Runner` (ONNX Runtime on CPU)."""

    task = "classify"

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.api import load
        from transferkit.core.inference import OutputHead, Runner, draft_for

        self.task = str(config.get("task"))
        self.model = load(path)
        self.classes = self.model.class_names
        pre = self.model.preprocessing
        self.transform = self.model.transform()
        self.draft = draft_for(pre)
        self.runner = Runner(OutputHead.make(self.model.module, "probs"), pre.input_size, device=opts.device,
                             engine=opts.engine)

    def info(self):
        return {**super().info(), "engine": self.runner.engine}

    def prepare(self, inp: Input):
        top_k = int(inp.options.get("top_k", 5))
        if top_k < 1:
            raise TransferkitError("top_k must be at least 1.")
        return inp.name, top_k, self.transform(self.decode(inp, self.draft))

    def run(self, items):
        import torch

        from transferkit.api import top_k_row

        probs = self.runner(torch.stack([x for _, _, x in items]))
        return [top_k_row(name, p, self.classes, k) for (name, k, _), p in zip(items, probs)]


# --------------------------------------------------------------------------- autoencoders and novelty


def _png_data_url(arr: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) -> ``data:image/png;base64,...`` (drawn by the page, no file written)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ReconstructionHandler(Handler):
    """An autoencoder: ``{"path", "score", "reconstruction"}``, score = mean squared error per pixel (the
    novelty score), reconstruction = the decoded image as a PNG data URL."""

    task = "autoencoder"

    def __init__(self, name, path, config, opts, model: Any = None):
        super().__init__(name, path, config, opts)
        from transferkit.core.modeldir import load

        tm = model if model is not None else load(path)
        self.module = tm.module.eval()
        d = tm.config["data"]
        self.size = (int(d["size"][0]), int(d["size"][1]))
        self.channels = int(d["channels"])  # the target's channels
        self.in_channels = int(tm.config.get("input_shape", [self.channels])[0])

    def info(self):
        return {**super().info(), "classes": None, "input_size": [self.in_channels, *self.size]}

    def _array(self, img, channels: int) -> np.ndarray:
        from PIL import Image

        img = img.convert("L") if channels == 1 else img
        return np.asarray(img.resize((self.size[1], self.size[0]), Image.BILINEAR), dtype=np.uint8)

    def prepare(self, inp: Input):
        img = self.decode(inp)  # read as autoencoder.data.read_files reads files
        return inp.name, self._array(img, self.in_channels), self._array(img, self.channels)

    def reconstruct(self, items):
        """(scores, decoded uint8 images) of a batch from :meth:`prepare`."""
        import torch

        from transferkit.tasks.autoencoder.data import to_float, to_uint8

        x, target = to_float(np.stack([a for _, a, _ in items])), to_float(np.stack([t for _, _, t in items]))
        with torch.inference_mode():
            out = self.module(x)
        scores = ((out - target) ** 2).flatten(1).mean(dim=1).numpy().astype(np.float64)
        return scores, to_uint8(out)

    def run(self, items):
        scores, recon = self.reconstruct(items)
        return [{"path": name, "score": float(s), "reconstruction": _png_data_url(r)}
                for (name, _, _), s, r in zip(items, scores, recon)]


class NoveltyHandler(Handler):
    """A novelty run (``novelty.json``): ``{"path", "score", "novel"}`` as ``transferkit novelty score --json``."""

    task = "novelty"

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.tasks.novelty import Detector

        self.det = Detector(path).load()
        self.method = self.det.method
        if self.method == "reconstruction":
            tm = self.det.autoencoder
            self.inner = ReconstructionHandler(name, path, tm.config, opts, model=tm)
        else:
            from transferkit.core.inference import OutputHead, Runner, draft_for

            tm = self.det.embedding_model
            self.transform, self.draft = tm.transform(), draft_for(tm.preprocessing)
            self.runner = Runner(OutputHead.make(tm.module, "pre_logits"), tm.preprocessing.input_size,
                                 device=opts.device, engine=opts.engine)

    def info(self):
        return {**super().info(), "method": self.method, "threshold": self.det.threshold,
                **({"input_size": self.inner.info()["input_size"]} if self.method == "reconstruction" else {})}

    def prepare(self, inp: Input):
        if self.method == "reconstruction":
            return self.inner.prepare(inp)
        return inp.name, self.transform(self.decode(inp, self.draft))

    def run(self, items):
        if self.method == "reconstruction":
            scores, _ = self.inner.reconstruct(items)
        else:
            import torch

            from transferkit.tasks.index.embed import l2_normalise

            scores = self.det.score_embeddings(l2_normalise(self.runner(torch.stack([x for _, x in items]))))
        return [{"path": it[0], "score": float(s), "novel": bool(s > self.det.threshold)} for it, s in zip(items, scores)]


# --------------------------------------------------------------------------- Siamese verification


class VerifyHandler(Handler):
    """A Siamese model with a gallery given at start: ``{"path", "identity", "distance", "match", "threshold"}``
    as ``transferkit siamese verify --json`` (the gallery is embedded once)."""

    task = "siamese"

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        import torch

        from transferkit.tasks.siamese.oneshot import image_format, load_siamese, model_embed, read_gallery

        gallery = opts.galleries.get(name) or opts.galleries.get("*")
        if not gallery:
            raise TransferkitError(f"{path} is a Siamese model: give the identities to verify against with "
                                   f"--gallery DIR (or --gallery {name}=DIR).")
        self.model = load_siamese(path)
        stored = self.model.config.get("verification") or {}
        if "threshold" not in stored:
            raise TransferkitError(f"{path} has no verification threshold yet: run `transferkit siamese calibrate "
                                   f"{path} DATA` first.")
        self.threshold = float(stored["threshold"])
        self.size, self.grey, self.ink = image_format(self.model)
        g_images, g_ids, _ = read_gallery(gallery, self.size, self.grey, self.ink)
        self.ids = sorted(set(g_ids))
        self.cols = [[n for n, g in enumerate(g_ids) if g == k] for k in self.ids]
        with torch.inference_mode():
            self.g_emb = model_embed(self.model, g_images)
        self._embed = model_embed

    def info(self):
        return {**super().info(), "classes": self.ids, "threshold": self.threshold}

    def prepare(self, inp: Input):
        from transferkit.tasks.siamese.data import to_array

        return inp.name, to_array(self.decode(inp), self.size, self.grey, self.ink)

    def run(self, items):
        import torch

        q = self._embed(self.model, np.stack([a for _, a in items]))
        with torch.inference_mode():
            d = self.model.module.cdist(q, self.g_emb).numpy()  # (queries, gallery images)
        per_id = np.stack([d[:, c].min(axis=1) for c in self.cols], axis=1)  # (queries, identities)
        out = []
        for (name, _), row in zip(items, per_id):
            best = int(row.argmin())
            dist = float(row[best])
            out.append({"path": name, "identity": self.ids[best], "distance": dist, "match": bool(dist <= self.threshold),
                        "threshold": self.threshold})
        return out


# --------------------------------------------------------------------------- text in


class TranslateHandler(Handler):
    """A seq2seq model: text in, ``{"source", "translation", "score"}`` as ``seq2seq translate --json``."""

    task = "seq2seq"
    kind = "text"
    max_chars = 2000

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.tasks.seq2seq import Translator

        self.tr = Translator.load(path, device="cpu" if opts.device == "auto" else opts.device)

    def info(self):
        return {**super().info(), "classes": None, "input_size": None, "level": self.config.get("level")}

    def prepare(self, inp: Input):
        if inp.text is None:
            raise TransferkitError(f"Model {self.name!r} translates text: send JSON {{\"text\": \"...\"}}.")
        if len(inp.text) > self.max_chars:
            raise TransferkitError(f"The text has {len(inp.text)} characters; at most {self.max_chars} are accepted.")
        return inp.text

    def run(self, items):
        return self.tr.translate(list(items))


# --------------------------------------------------------------------------- captions and generators


class CaptionHandler(Handler):
    """An image captioning model: ``{"path", "caption", "score"}`` as ``caption predict --json`` (the
    :class:`~transferkit.tasks.caption.Captioner` is loaded once)."""

    task = "caption"

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.tasks.caption import Captioner, predict

        self.cap = Captioner.load(path, device="cpu" if opts.device == "auto" else opts.device)
        self.predict = predict

    def info(self):
        return {**super().info(), "classes": None}

    def prepare(self, inp: Input):
        return inp.name, self.decode(inp)

    def run(self, items):
        return self.predict(self.cap, list(items))


class DetectHandler(Handler):
    """An object detector: ``{"path", "width", "height", "boxes": [{"label", "score", "xyxy"}]}`` as
    ``detect predict --json``, through the task's ``predict`` on the decoded uploads (the model loaded once)."""

    task = "detect"

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.tasks.detect import load_model, predict

        self.model = load_model(path)
        self.predict = predict

    def prepare(self, inp: Input):
        return inp.name, self.decode(inp)

    def run(self, items):
        return self.predict(self.model, list(items))


class GanHandler(Handler):
    """A GAN.  DCGAN (kind ``generate``): JSON ``{"n", "seed", "label"}`` in, one ``{"index", "seed", ["label"],
    "png_base64"}`` per generated image out; pix2pix (an image in): ``{"path", "png_base64"}``; both as the
    task's ``predict``."""

    task = "gan"
    max_n = 64

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.tasks.gan import predict
        from transferkit.tasks.gan.train import load_gan

        self.model, _ = load_gan(path)
        self.predict = predict
        self.dcgan = self.model.config["kind"] == "dcgan"
        self.kind = "generate" if self.dcgan else "image"

    def info(self):
        c = self.model.config
        return {**super().info(), "classes": list(c.get("classes") or []) or None, "gan": c["kind"],
                "input_size": [int(c.get("in_channels", c.get("channels", 3))), int(c["image_size"]), int(c["image_size"])]}

    def prepare(self, inp: Input):
        if not self.dcgan:
            return inp.name, self.decode(inp)
        try:
            n, seed = int(inp.options.get("n", 8)), int(inp.options.get("seed", 0))
        except (TypeError, ValueError):
            raise TransferkitError("n and seed must be integers.") from None
        if not 1 <= n <= self.max_n:
            raise TransferkitError(f"n must be between 1 and {self.max_n}.")
        return n, seed, inp.options.get("label")

    def run(self, items):
        if not self.dcgan:
            return self.predict(self.model, list(items))
        # each request is its own draw (its seed); the answer for one input is the list of its images
        return [self.predict(self.model, None, n=n, seed=seed, label=label) for n, seed, label in items]


# --------------------------------------------------------------------------- tasks that follow the contract


class ContractHandler(Handler):
    """A task package that exposes ``predict(model, inputs, **opts) -> list[dict]`` (the serving contract):
    the model is loaded once; each batch is a list of ``(name, PIL image)`` pairs."""

    def __init__(self, name, path, config, opts):
        super().__init__(name, path, config, opts)
        from transferkit.core.modeldir import load

        self.task = str(config["task"])
        self.predict = importlib.import_module(f"transferkit.tasks.{self.task}").predict
        self.model = load(path)

    def prepare(self, inp: Input):
        return inp.name, self.decode(inp)

    def run(self, items):
        return self.predict(self.model, list(items))


# --------------------------------------------------------------------------- the registry

Factory = Callable[[str, Path, dict[str, Any], ServeOptions], Handler]


def _autoencoder(name, path, config, opts) -> Handler:
    if config.get("class_names"):  # `autoencoder finetune` saves a classifier
        return ClassifierHandler(name, path, config, opts)
    return ReconstructionHandler(name, path, config, opts)


HANDLERS: dict[str, Factory] = {}


def register(task: str, factory: Factory) -> None:
    """Serve model directories of ``task`` with ``factory(name, path, config, options)``; names are unique."""
    if task in HANDLERS:
        raise ValueError(f"a serve handler for task {task!r} is already registered")
    HANDLERS[task] = factory


register("pretrained", ClassifierHandler)
register("classify", ClassifierHandler)
register("arch", ClassifierHandler)
register("autoencoder", _autoencoder)
register("novelty", NoveltyHandler)
register("siamese", VerifyHandler)
register("seq2seq", TranslateHandler)
register("caption", CaptionHandler)
register("gan", GanHandler)
register("detect", DetectHandler)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def servable_tasks() -> list[str]:
    return sorted(HANDLERS)


def split_spec(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` -> (name, dir); the name defaults to the folder's name."""
    if "=" in spec and NAME_RE.match(spec.split("=", 1)[0]) and not Path(spec).exists():
        name, path = spec.split("=", 1)
    else:
        name, path = Path(os.path.abspath(spec)).name, spec
    if not NAME_RE.match(name):
        raise TransferkitError(f"{name!r} cannot name a model in URLs; give NAME=DIR with letters, digits, '.', '_' or '-'.")
    return name, path


def load_handler(name: str, path: str | os.PathLike, opts: ServeOptions) -> Handler:
    """The handler for one model or run directory (loaded now), or one clear error."""
    from transferkit.core.modeldir import find_model_dir, read_config
    from transferkit.tasks.novelty.detector import STATE_FILE

    root = Path(path)
    if not root.exists():
        raise TransferkitError(f"No such model directory: {path}")
    if (root / STATE_FILE).is_file():
        return HANDLERS["novelty"](name, root, {"task": "novelty"}, opts)
    found = find_model_dir(root)
    if found is None:
        raise TransferkitError(f"{path} is not a transferkit model directory (no config.json) or novelty run.")
    config = read_config(found)
    task = str(config["task"])
    factory = HANDLERS.get(task)
    if factory is None:
        try:
            mod = importlib.import_module(f"transferkit.tasks.{task}")
        except ImportError:
            mod = None
        if mod is None or not callable(getattr(mod, "predict", None)):
            raise TransferkitError(f"{path} holds a {task!r} model, which `transferkit serve` cannot serve yet "
                                   f"(servable: {', '.join(servable_tasks())}).")
        factory = ContractHandler
    return factory(name, root if task == "novelty" else found, config, opts)
