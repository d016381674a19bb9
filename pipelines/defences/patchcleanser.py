"""PatchCleanser (Xiang, Mahloujifar & Mittal, USENIX Security 2022): double masking, certified against one patch.

Threat model: the attacker replaces every pixel of one axis-aligned ``p_h × p_w`` window of the image (anywhere)
with arbitrary values in [0, 1]. The defence is a wrapper around *any* classifier (no retraining needed):

* **Mask set** (:func:`mask_set`, the paper's R-covering): along an axis of ``n`` pixels, with ``k`` masks per axis
  against a patch of ``p`` pixels, the stride is ``s = ⌈(n − p + 1) / k⌉`` and the mask width ``m = p + s − 1``;
  masks start at ``0, s, 2s, …`` and one more is put flush with the far edge when the last start does not reach
  ``n − m``. A window of ``p`` pixels starting anywhere in ``[0, n − p]`` then lies inside some mask (the gap
  between two mask starts is at most ``s`` and ``m − p + 1 = s``). The 2-D set is the product of the two axes'
  sets: at most ``k²`` rectangles (:func:`covers_every_patch` checks it exhaustively).
* **Double masking** (:meth:`PatchCleanser.predict`, the paper's Algorithm 1): predict on the image with each
  one mask. If every prediction agrees, return it (case 1: agreement). Else the majority label (ties: the
  smallest class index) and the *disagreer* masks; for each disagreer ``m0`` in mask order, predict on the image
  with ``m0`` **and** every mask ``m1``: if all those agree with ``m0``'s label, return it (case 2: a disagreer
  wins). Else return the majority (case 3).
* **Certification** (:meth:`PatchCleanser.certify`, the paper's Algorithm 2 / Theorem 1): the image is certified
  for label ``y`` against every patch of the mask set's size when the model predicts ``y`` on the image with every
  pair of masks ``(m0, m1)`` (``m0 == m1`` included, i.e. every one-mask image too). The check on the *clean*
  image is the certificate for every patched image: a patch lies inside some mask ``m*``; every one-mask
  prediction with ``m*`` is the clean two-mask prediction, so ``m*`` votes ``y`` in round 1 and, in round 2,
  any disagreer's pair with ``m*`` is an unpatched two-mask image voting ``y`` — no disagreer with another
  label can win, and the majority is ``y`` or a disagreer labelled ``y`` wins.

Masked pixels are set to ``fill`` (default 0.5 grey; the model's normalisation is its own first layer).

The adaptive attack (:class:`AdaptiveView`, :func:`patch_attack`): the double-masked prediction is a vote, with no
useful gradient, so the attacker differentiates the *masked predictions*: the log of the softmax averaged over
randomly drawn masks (EOT over mask positions; one mask, or two with probability ``double``). Under
``torch.no_grad`` the view is the defence itself (the exact double-masked vote), so any attack's own success
check — the PGD base's final predictions, the physical loop's fresh-draw evaluation — scores the real defence.
The per-image patch attack is ``physical.attacks.variants.MaskedPGD`` (unbounded inside a per-row
``grad_mask`` square, the ROA patch of the testbed) on that view, at a grid of patch positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.defences import DefenceError


# ------------------------------------------------------------------------------------------------ mask set
def axis_masks(n: int, p: int, k: int) -> tuple[int, int, tuple[int, ...]]:
    """(mask width, stride, mask starts) along one axis of ``n`` pixels against a patch of ``p`` pixels with at
    most ``k`` masks (the paper's R-covering along one axis)."""
    for name, v in (("image size", n), ("patch size", p), ("masks per axis (k)", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DefenceError(f"{name} must be a positive integer, got {v!r}")
    if p > n:
        raise DefenceError(f"patch size {p} is larger than the image ({n} pixels)")
    s = math.ceil((n - p + 1) / k)
    m = min(n, p + s - 1)
    starts = list(range(0, n - m + 1, s))
    if starts[-1] != n - m:
        starts.append(n - m)
    return m, s, tuple(starts)


@dataclass(frozen=True)
class MaskSet:
    """The rectangles ``[y, y + mask_h) × [x, x + mask_w)`` for every ``y`` in ``ys`` and ``x`` in ``xs``."""

    image_size: tuple[int, int]  # (H, W)
    patch_size: tuple[int, int]  # (p_h, p_w): the largest patch this set certifies against
    k: tuple[int, int]  # masks per axis asked for (the set has at most k_h × k_w)
    mask_size: tuple[int, int]
    stride: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, x0, y1, x1) per mask, row-major (mask index order)."""
        mh, mw = self.mask_size
        return [(y, x, y + mh, x + mw) for y in self.ys for x in self.xs]

    def tensor(self, device: torch.device | str = "cpu") -> Tensor:
        """(K, 1, H, W) float: 1 where the image is kept, 0 where the mask hides it."""
        h, w = self.image_size
        out = torch.ones(len(self), 1, h, w, device=device)
        for i, (y0, x0, y1, x1) in enumerate(self.boxes()):
            out[i, :, y0:y1, x0:x1] = 0
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"image_size": list(self.image_size), "patch_size": list(self.patch_size), "k": list(self.k),
                "mask_size": list(self.mask_size), "stride": list(self.stride), "masks": len(self),
                "patch_fraction": self.patch_size[0] * self.patch_size[1] / (self.image_size[0] * self.image_size[1])}


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return int(v[0]), int(v[1])
    if isinstance(v, int) and not isinstance(v, bool):
        return v, v
    raise DefenceError(f"{name} must be an int or a pair of ints, got {v!r}")


def mask_set(image_size: int | tuple[int, int], patch_size: int | tuple[int, int],
             k: int | tuple[int, int] = 6) -> MaskSet:
    """The R-covering mask set for a ``patch_size`` patch on an ``image_size`` image, ``k`` masks per axis."""
    (h, w), (ph, pw), (kh, kw) = _pair(image_size, "image_size"), _pair(patch_size, "patch_size"), _pair(k, "k")
    mh, sh, ys = axis_masks(h, ph, kh)
    mw, sw, xs = axis_masks(w, pw, kw)
    return MaskSet((h, w), (ph, pw), (kh, kw), (mh, mw), (sh, sw), ys, xs)


def patch_side(fraction: float, image_size: int | tuple[int, int]) -> int:
    """The side of the square patch covering ``fraction`` of the image (rounded; at least 1 pixel)."""
    if not 0 < fraction <= 1:
        raise DefenceError(f"patch fraction must be in (0, 1], got {fraction!r}")
    h, w = _pair(image_size, "image_size")
    return max(1, min(h, w, round(math.sqrt(fraction * h * w))))


def covers_every_patch(masks: MaskSet) -> bool:
    """Exhaustive check: every ``patch_size`` window of the image lies inside at least one mask of the set."""
    h, w = masks.image_size
    ph, pw = masks.patch_size
    hidden = masks.tensor() == 0  # (K, 1, H, W)
    for y in range(h - ph + 1):
        for x in range(w - pw + 1):
            if not bool(hidden[:, 0, y:y + ph, x:x + pw].flatten(1).all(1).any()):
                return False
    return True


# ------------------------------------------------------------------------------------------------ the defence
@dataclass
class DoubleMaskResult:
    """What :meth:`PatchCleanser.predict` returns per image."""

    label: Tensor  # (B,) the defended prediction
    case: Tensor  # (B,) 1 = all one-mask predictions agree, 2 = a disagreer won round 2, 3 = majority
    first_round: Tensor  # (B, K) one-mask predictions


class PatchCleanser(nn.Module):
    """Double masking around ``model`` (any classifier: BCHW RGB in [0, 1] → logits) with the mask set ``masks``.

    ``forward`` returns the defended prediction as one-hot "logits" (argmax = the label; no gradient) so the
    defence drops into code that takes a classifier. ``batch``: masked images per forward pass of ``model``.
    Runs on the model's device (CPU or CUDA)."""

    def __init__(self, model: nn.Module, masks: MaskSet, fill: float = 0.5, batch: int = 512,
                 num_classes: int | None = None) -> None:
        super().__init__()
        if not 0 <= fill <= 1:
            raise DefenceError(f"mask fill must be in [0, 1], got {fill!r}")
        self.model = model
        self.masks = masks
        self.fill = float(fill)
        self.batch = int(batch)
        self.num_classes = num_classes
        self.register_buffer("mask_tensor", masks.tensor(), persistent=False)

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else self.mask_tensor.device

    def masked(self, x: Tensor, keep: Tensor) -> Tensor:
        """``x`` with the hidden pixels (``keep == 0``) set to ``fill``; ``keep`` broadcasts against ``x``."""
        return x * keep + self.fill * (1 - keep)

    @torch.no_grad()
    def _labels(self, xs: Tensor) -> Tensor:
        out = []
        for i in range(0, len(xs), self.batch):
            out.append(self.model(xs[i:i + self.batch]).argmax(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=xs.device)

    @torch.no_grad()
    def one_mask_predictions(self, x: Tensor) -> Tensor:
        """(B, K) predictions with each single mask."""
        x = x.to(self.mask_tensor.device)
        b, k = x.shape[0], len(self.masks)
        per_image = max(1, self.batch // k)
        out = []
        for i in range(0, b, per_image):
            xi = x[i:i + per_image]
            xs = self.masked(xi[:, None], self.mask_tensor[None]).flatten(0, 1)
            out.append(self._labels(xs).view(len(xi), k))
        return torch.cat(out)

    @torch.no_grad()
    def pair_predictions(self, x: Tensor, first: Tensor, second: Tensor) -> Tensor:
        """(len(first),) predictions on image ``x`` (1, 3, H, W) with masks ``first[i]`` and ``second[i]``."""
        keep = self.mask_tensor[first] * self.mask_tensor[second]
        return self._labels(self.masked(x.to(keep.device), keep))

    @torch.no_grad()
    def predict(self, x: Tensor) -> DoubleMaskResult:
        """Algorithm 1 (double masking) on a batch."""
        x = x.to(self.mask_tensor.device)
        first = self.one_mask_predictions(x)
        k = first.shape[1]
        n_cls = self.num_classes or int(first.max()) + 1
        counts = F.one_hot(first, n_cls).sum(1)  # (B, C)
        majority = counts.argmax(1)  # ties: the first (smallest) class index
        label, case = majority.clone(), torch.ones_like(majority)
        chunk = max(1, self.batch // k)  # disagreers whose second round runs in one pass
        for b in torch.nonzero((first != majority[:, None]).any(1)).flatten().tolist():
            case[b] = 3
            dis = torch.nonzero(first[b] != majority[b]).flatten()
            if len(dis) * k > k * (k + 1) // 2:  # cheaper: every unordered pair once (pairs are symmetric)
                i, j = torch.triu_indices(k, k, device=x.device)
                mat = torch.empty(k, k, dtype=torch.long, device=x.device)
                mat[i, j] = mat[j, i] = self.pair_predictions(x[b:b + 1], i, j)
                wins = (mat[dis] == first[b, dis][:, None]).all(1)
                if bool(wins.any()):
                    label[b], case[b] = first[b, dis[int(wins.nonzero()[0])]], 2
                continue
            for c in range(0, len(dis), chunk):
                d = dis[c:c + chunk]
                second = self.pair_predictions(x[b:b + 1], d.repeat_interleave(k), torch.arange(k, device=x.device)
                                               .repeat(len(d))).view(len(d), k)
                wins = (second == first[b, d][:, None]).all(1)
                if bool(wins.any()):  # the first disagreer (mask order) whose second round agrees with it
                    label[b], case[b] = first[b, d[int(wins.nonzero()[0])]], 2
                    break
        return DoubleMaskResult(label=label, case=case, first_round=first)

    @torch.no_grad()
    def certify(self, x: Tensor, y: Tensor) -> Tensor:
        """(B,) bool: the prediction on ``x`` is certified to be ``y`` against any patch within the mask set's
        patch size (every one- and two-mask prediction is ``y``)."""
        x, y = x.to(self.mask_tensor.device), y.to(self.mask_tensor.device)
        first = self.one_mask_predictions(x)
        ok = (first == y[:, None]).all(1)
        k = len(self.masks)
        i, j = torch.triu_indices(k, k, offset=1, device=x.device)
        for b in torch.nonzero(ok).flatten().tolist():
            ok[b] = bool((self.pair_predictions(x[b:b + 1], i, j) == y[b]).all())
        return ok

    def forward(self, x: Tensor) -> Tensor:
        label = self.predict(x.detach()).label
        n_cls = self.num_classes or int(label.max()) + 1
        return F.one_hot(label, n_cls).float().to(x.device)


# ------------------------------------------------------------------------------------------------ adaptive attack
class AdaptiveView(nn.Module):
    """The attacker's view of a :class:`PatchCleanser`: with gradients on, log of the softmax averaged over
    ``samples`` randomly drawn masks per image (a second mask with probability ``double``; EOT over mask
    positions, its own generator seeded ``seed``); under ``torch.no_grad`` the defence's own vote (one-hot)."""

    def __init__(self, defence: PatchCleanser, samples: int = 8, double: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if samples < 1 or not 0 <= double <= 1:
            raise DefenceError(f"need samples >= 1 and double in [0, 1], got {samples!r}, {double!r}")
        self.defence = defence
        self.samples = int(samples)
        self.double = float(double)
        self.generator = torch.Generator().manual_seed(seed)

    def masked_log_probs(self, x: Tensor) -> Tensor:
        b, s = x.shape[0], self.samples
        masks = self.defence.mask_tensor
        k = masks.shape[0]
        first = torch.randint(k, (s * b,), generator=self.generator).to(masks.device)
        second = torch.randint(k, (s * b,), generator=self.generator).to(masks.device)
        use2 = (torch.rand(s * b, generator=self.generator) < self.double).to(masks.device)
        keep = masks[first] * torch.where(use2[:, None, None, None], masks[second], torch.ones_like(masks[second]))
        xs = self.defence.masked(x.repeat(s, 1, 1, 1), keep.to(x.device))
        p = F.softmax(self.defence.model(xs), 1).view(s, b, -1).mean(0)
        return torch.log(p.clamp_min(1e-12))

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.masked_log_probs(x)
        return self.defence(x)


def patch_positions(image_size: tuple[int, int], side: int, grid: int) -> list[tuple[int, int]]:
    """``grid × grid`` top-left corners of a ``side``-pixel patch spread evenly over the image (edges included)."""
    h, w = image_size
    ys = sorted({round(v) for v in torch.linspace(0, h - side, grid).tolist()})
    xs = sorted({round(v) for v in torch.linspace(0, w - side, grid).tolist()})
    return [(y, x) for y in ys for x in xs]


def square_masks(image_size: tuple[int, int], side: int, positions: list[tuple[int, int]],
                 device: torch.device | str = "cpu") -> Tensor:
    """(L, 1, H, W) float: 1 inside the ``side`` square at each position."""
    h, w = image_size
    out = torch.zeros(len(positions), 1, h, w, device=device)
    for i, (y, x) in enumerate(positions):
        out[i, :, y:y + side, x:x + side] = 1
    return out


@dataclass
class PatchAttackResult:
    adversarial: Tensor  # (B, L, 3, H, W) the patched images, one per position
    positions: list[tuple[int, int]]
    predictions: Tensor  # (B, L) the attacked model's predictions (the exact defence under no_grad)
    broken: Tensor  # (B,) some position's patched image is misclassified


def patch_attack(model: nn.Module, x: Tensor, y: Tensor, side: int, *, grid: int = 4, steps: int = 20,
                 alpha: float = 16 / 255, seed: int = 0, loss: str = "cw", loss_fn: Any = None) -> PatchAttackResult:
    """The testbed's masked (ROA) patch attack per image: ``physical.attacks.variants.MaskedPGD`` (unbounded inside
    a ``side × side`` square, uniform-noise start) at ``grid × grid`` positions, on ``model`` (an
    :class:`AdaptiveView` for the adaptive attack, the bare classifier for the non-adaptive one). A patched image
    differs from ``x`` only inside its square (checked). ``loss_fn``: the PGD base's loss hook instead of ``loss``
    (e.g. the detector-aware objective)."""
    from physical.attacks.variants import MaskedPGD

    h, w = x.shape[-2:]
    pos = patch_positions((h, w), side, grid)
    n_pos = len(pos)
    sq = square_masks((h, w), side, pos, x.device)
    xs = x.repeat_interleave(n_pos, 0)
    ys = y.repeat_interleave(n_pos, 0)
    grad_mask = sq.repeat(len(x), 1, 1, 1)
    attack = MaskedPGD(steps=steps, alpha=alpha, loss=loss, loss_fn=loss_fn)
    r = attack(model, xs, ys, generator=torch.Generator().manual_seed(seed), grad_mask=grad_mask)
    adv = r.adversarial
    if bool(((adv - xs).abs() * (1 - grad_mask)).amax() > 0):
        raise DefenceError("patch attack changed pixels outside its square (threat model violated)")
    preds = r.predictions.view(len(x), n_pos)
    return PatchAttackResult(adversarial=adv.view(len(x), n_pos, *x.shape[1:]), positions=pos, predictions=preds,
                             broken=(preds != y[:, None]).any(1))


# ------------------------------------------------------------------------------------------------ masked fine-tuning
def weights_sha256(path: str | Path | None = None) -> str:
    """The first 12 hex digits of the sha256 of a weights file (default: the shipped sign-cnn weights)."""
    import hashlib

    from testbed.models.signs import SIGN_CNN_WEIGHTS

    return hashlib.sha256(Path(path or SIGN_CNN_WEIGHTS).read_bytes()).hexdigest()[:12]


def random_two_masks(mask_sets: list[MaskSet], fill: float = 0.5) -> Callable[[Tensor, torch.Generator], Tensor]:
    """Training augmentation of PatchCleanser (the paper fine-tunes on masked images): per image, one of
    ``mask_sets`` and two of its masks drawn at random (they may coincide), hidden with ``fill``."""
    tensors = [m.tensor() for m in mask_sets]

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        b = x.shape[0]
        which = torch.randint(len(tensors), (b,), generator=gen)
        keep = torch.empty(b, 1, *x.shape[-2:])
        for s, t in enumerate(tensors):
            rows = (which == s).nonzero().flatten()
            i = torch.randint(len(t), (len(rows),), generator=gen)
            j = torch.randint(len(t), (len(rows),), generator=gen)
            keep[rows] = t[i] * t[j]
        keep = keep.to(x.device)
        return x * keep + fill * (1 - keep)

    return augment


def fine_tune_sign_cnn(name: str, augment: Callable[[Tensor, torch.Generator], Tensor], describe: dict[str, Any], *,
                       epochs: int = 2, n_train: int = 8000, lr: float = 1e-3, batch_size: int = 128, seed: int = 0,
                       threads: int = 1, cache_dir: Path | None = None, force: bool = False,
                       log: Callable[[str], None] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A sign-cnn fine-tuned from the shipped weights on ``augment``-ed training images (masked for PatchCleanser,
    ablated for de-randomized smoothing) with the project's one training loop (``worlds.signs.train.fit``),
    cached as ``cache_dir/<name>.pt`` (``testbed.runs.save_checked``) with its config, which includes ``describe``
    and the sha256 prefix of the shipped weights it started from; retrained when that config changes.
    Returns (model in eval mode with frozen parameters, the checkpoint's record)."""
    import time

    from pipelines.defences.training import DEFAULT_CACHE, _load_cache, build_model, training_data
    from testbed.models.signs import SIGN_CNN_WEIGHTS
    from testbed.runs import save_checked
    from worlds.signs.train import deterministic, fit

    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    path = cache_dir / f"{name}.pt"
    config = {"name": name, **describe, "epochs": epochs, "n_train": n_train, "lr": lr, "batch_size": batch_size,
              "seed": seed, "threads": threads, "init": "sign-cnn", "init_sha256": weights_sha256(SIGN_CNN_WEIGHTS)}
    model = build_model("clean")
    ckpt = _load_cache(path, "masked fine-tune cache") if path.is_file() and not force else None
    if ckpt is not None and ckpt.get("config") == config:
        model.load_state_dict(ckpt["state_dict"])
    else:
        log = log or (lambda s: None)
        t0 = time.time()
        base = torch.load(SIGN_CNN_WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(base["state_dict"])
        with deterministic(threads):
            xtr, ytr = training_data(n_train, 0, cache_dir)
            gen = torch.Generator().manual_seed(seed)

            def batch_loss(net: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
                net.train()
                z = net(augment(x, gen))
                return F.cross_entropy(z, y), z

            history = fit(model, xtr, ytr, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=5e-4,
                          generator=gen, batch_loss=batch_loss, log=lambda s: log(f"{name}: {s}"), started=t0)
        model = model.cpu().eval()
        ckpt = {"state_dict": model.state_dict(), "config": config, "history": history,
                "train_seconds": round(time.time() - t0, 1), "torch": str(torch.__version__)}
        save_checked(ckpt, path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    record = {k: ckpt[k] for k in ("config", "history", "train_seconds") if k in ckpt}
    record["sha256"] = weights_sha256(path)
    return model, record


def masked_sign_cnn(sides: tuple[int, ...] = (3, 6, 10), k: int = 6, *, epochs: int = 3, fill: float = 0.5,
                    cache_dir: Path | None = None, log: Callable[[str], None] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The sign-cnn fine-tuned for PatchCleanser: two random masks of the 32 px mask sets for ``sides`` (cached as
    ``patchcleanser_masked.pt``)."""
    sets = [mask_set(32, s, k) for s in sides]
    return fine_tune_sign_cnn("patchcleanser_masked", random_two_masks(sets, fill),
                              {"augment": "two random masks of the PatchCleanser mask sets", "patch_sides": list(sides),
                               "k": k, "fill": fill}, epochs=epochs, cache_dir=cache_dir, log=log)
