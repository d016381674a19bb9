"""physical.attacks: digital attacks, their equality with torchattacks 3.5.1, EOT, registry, sanity checks.

The models under test are listed in MODELS (name -> builder returning (model, images, labels)); the tiny seeded CNN
always runs, MobileNetV2 runs when its weights are cached (``testbed assets fetch``). Add a model there to run the
torchattacks-equality tests on it.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchattacks  # a dev dependency (pyproject [dev], installed by setup.sh): missing means a broken install
from torch import nn

from physical.attacks import (
    BIM,
    FGSM,
    PGD,
    PGDL2,
    CarliniWagnerL2,
    DeepFool,
    FoolingImages,
    IterLL,
    StepLL,
    get_attack,
    kurakin_steps,
    list_attacks,
    register_attack,
)
from physical.attacks.sanity import check_stronger, zero_gradient_fraction  # noqa: E402
from testbed.errors import ConfigError, ImageError, TestbedError  # noqa: E402


# ------------------------------------------------------------------------------------------- models
def synthetic_batch(n: int, gen: torch.Generator, size: int = 32, classes: int = 10):
    """Class k: a grating at angle k·π/10 tinted by a class colour, random phase and frequency, pixel noise."""
    y = torch.randint(0, classes, (n,), generator=gen)
    theta = y.float() * math.pi / classes
    phase = torch.rand(n, generator=gen) * 2 * math.pi
    freq = 0.5 + 0.2 * torch.rand(n, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    proj = xs[None] * torch.cos(theta)[:, None, None] + ys[None] * torch.sin(theta)[:, None, None]
    g = 0.5 + 0.35 * torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    hues = torch.tensor(
        [[1, .3, .3], [.3, 1, .3], [.3, .3, 1], [1, 1, .3], [1, .3, 1],
         [.3, 1, 1], [1, .6, .2], [.6, .2, 1], [.2, 1, .6], [.8, .8, .8]]
    )
    x = g[:, None] * hues[y][:, :, None, None] + 0.05 * torch.randn(n, 3, size, size, generator=gen)
    return x.clamp(0, 1), y


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f((x - 0.5) / 0.25)  # normalisation is a layer inside the model


def build_tiny(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(120):
        x, y = synthetic_batch(32, gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    x, y = synthetic_batch(16, torch.Generator().manual_seed(7))
    return model, x, y


def build_mobilenet_v2():
    from testbed.models.registry import get_model
    from testbed.photos import imagenet_view

    try:
        model = get_model("mobilenet_v2", device="cpu")
    except TestbedError as exc:  # weights not cached
        pytest.skip(f"mobilenet_v2 unavailable: {exc}")
    x = torch.cat([imagenet_view(n, 224) for n in ("chelsea", "coffee")])
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


MODELS = {"tiny_cnn": build_tiny, "mobilenet_v2": build_mobilenet_v2}
_cache: dict[str, tuple] = {}


def get(name: str):
    if name not in _cache:
        _cache[name] = MODELS[name]()
    return _cache[name]


@pytest.fixture(scope="module")
def tiny():
    return get("tiny_cnn")


# ------------------------------------------------------------------------------------------- torchattacks equality
EQUALITY_CASES = {
    "fgsm": (lambda: FGSM(eps=8 / 255), lambda m: torchattacks.FGSM(m, eps=8 / 255)),
    "bim": (lambda: BIM(eps=8 / 255, alpha=1 / 255, steps=5), lambda m: torchattacks.BIM(m, eps=8 / 255, alpha=1 / 255, steps=5)),
    # steps=None is Kurakin's rule; torchattacks' steps=0 is the same rule (floor(min(eps+4, 1.25 eps)) = 10 here)
    "bim_kurakin": (lambda: BIM(eps=8 / 255), lambda m: torchattacks.BIM(m, eps=8 / 255, alpha=1 / 255, steps=0)),
    "pgd": (
        lambda: PGD(eps=8 / 255, alpha=2 / 255, steps=5, random_start=False),
        lambda m: torchattacks.PGD(m, eps=8 / 255, alpha=2 / 255, steps=5, random_start=False),
    ),
    "pgd_targeted": (
        lambda: PGD(eps=16 / 255, alpha=2 / 255, steps=5, random_start=False),
        lambda m: torchattacks.PGD(m, eps=16 / 255, alpha=2 / 255, steps=5, random_start=False),
    ),
}


@pytest.mark.parametrize("model_name", ["tiny_cnn", pytest.param("mobilenet_v2", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", sorted(EQUALITY_CASES))
def test_equals_torchattacks(model_name, case):
    model, x, y = get(model_name)
    if model_name == "mobilenet_v2" and case in ("bim_kurakin",):
        pytest.skip("covered on the tiny model; keeps the MobileNetV2 run short")
    ours_f, theirs_f = EQUALITY_CASES[case]
    theirs = theirs_f(model)
    target = None
    if case.endswith("targeted"):
        target = (y + 1) % 10
        theirs.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10)
    result = ours_f()(model, x, y, target=target)
    ref = theirs(x, y)
    diff = (result.adversarial - ref).abs().max().item()
    assert diff <= 1e-6, f"{case} on {model_name}: max |ours - torchattacks| = {diff}"
    assert all(p.grad is None for p in model.parameters()), "an attack wrote parameter gradients"
    assert result.adversarial.dtype == torch.float32


def test_kurakin_steps():
    assert BIM(eps=8 / 255).num_steps() == 10  # min(12, 10)
    assert BIM(eps=16 / 255).num_steps() == 20  # min(20, 20)
    assert kurakin_steps(2 / 255) == 2  # min(6, 2.5) truncated, as torchattacks
    assert BIM(eps=4 / 255).config()["steps"] == 5
    assert BIM(eps=8 / 255).alpha == pytest.approx(1 / 255)


# ------------------------------------------------------------------------------------------- C&W and DeepFool vs torchattacks
def _success_and_median_l2(model, x, y, adv):
    with torch.no_grad():
        ok = model(adv).argmax(1) != y
    l2 = (adv - x).flatten(1).norm(dim=1)
    return ok, l2


def test_cw_l2_comparable_to_torchattacks(tiny):
    """Ours (5 binary-search steps × 100 Adam steps, c0 = 0.1) vs torchattacks.CW(c=1, steps=100, lr=0.01).

    Claim: our success rate >= theirs - 5 points, and on the samples both attacks fool, our median L2 <= 1.25 × theirs.
    Measured (tiny CNN, 16 images): ours 100% success, median L2 2.35 (all fooled); torchattacks 81%, 2.28;
    on the 13 samples both fool the median L2 is 2.28 for both.
    """
    model, x, y = tiny
    ours = CarliniWagnerL2(binary_search_steps=5, steps=100, lr=0.01, initial_const=0.1)(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    ref = torchattacks.CW(model, c=1, kappa=0, steps=100, lr=0.01)(x, y)
    for p in model.parameters():  # torchattacks' CW calls backward(): clear what it wrote
        p.grad = None
    ok_o, l2_o = _success_and_median_l2(model, x, y, ours.adversarial)
    ok_t, l2_t = _success_and_median_l2(model, x, y, ref)
    assert torch.equal(ok_o, ours.success)
    both = ok_o & ok_t
    assert both.sum() >= 4
    med_o, med_t = l2_o[both].median().item(), l2_t[both].median().item()
    print(f"C&W-L2: ours success {ok_o.float().mean():.3f} median L2 {l2_o[ok_o].median():.3f}; "
          f"torchattacks {ok_t.float().mean():.3f} {l2_t[ok_t].median():.3f}; common {med_o:.3f} vs {med_t:.3f}")
    assert ok_o.float().mean() >= ok_t.float().mean() - 0.05
    assert med_o <= 1.25 * med_t
    assert len(ours.extras["const"]) == 16


def test_cw_l2_targeted_and_kappa(tiny):
    model, x, y = tiny
    t = (y + 3) % 10
    r = CarliniWagnerL2(binary_search_steps=3, steps=60, lr=0.02, initial_const=1.0, kappa=1.0)(model, x[:6], y[:6], target=t[:6])
    assert r.success.all() and torch.equal(r.predictions, t[:6])
    with torch.no_grad():
        z = model(r.adversarial)
    other = z.scatter(1, t[:6, None], float("-inf")).amax(1)
    assert (z.gather(1, t[:6, None])[:, 0] - other >= 1.0 - 1e-4).all()  # the kappa margin holds


def test_deepfool_comparable_to_torchattacks(tiny):
    """Ours (overshoot 0.02, 50 steps, all classes) vs torchattacks.DeepFool(steps=50, overshoot=0.02).

    Claim: our success >= theirs - 5 points and our median L2 over the samples both fool <= 1.25 × theirs.
    Measured (tiny CNN, 16 images): ours 100% success, median L2 2.23; torchattacks 87.5%, 1.88;
    on the samples both fool the median L2 is 1.88 for both.
    """
    model, x, y = tiny
    ours = DeepFool(steps=50, overshoot=0.02, candidates=None)(model, x, y)
    ref = torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y)
    for p in model.parameters():  # torchattacks' DeepFool calls backward(): clear what it wrote
        p.grad = None
    ok_o, l2_o = _success_and_median_l2(model, x, y, ours.adversarial)
    ok_t, l2_t = _success_and_median_l2(model, x, y, ref)
    both = ok_o & ok_t
    med_o, med_t = l2_o[both].median().item(), l2_t[both].median().item()
    print(f"DeepFool: ours success {ok_o.float().mean():.3f} median L2 {l2_o[ok_o].median():.3f}; "
          f"torchattacks {ok_t.float().mean():.3f} {l2_t[ok_t].median():.3f}; common {med_o:.3f} vs {med_t:.3f}")
    assert ok_o.float().mean() >= ok_t.float().mean() - 0.05
    assert med_o <= 1.25 * med_t
    # top-k candidates (default 10 of 10 here) give the same result
    again = DeepFool()(model, x, y)
    assert torch.allclose(again.adversarial, ours.adversarial)


# ------------------------------------------------------------------------------------------- behaviour
def _ll_prob(model, x, ll):
    with torch.no_grad():
        return model(x).softmax(1).gather(1, ll[:, None])[:, 0]


@pytest.mark.parametrize("attack", [StepLL(eps=32 / 255), IterLL(eps=16 / 255)], ids=["step_ll", "iter_ll"])
def test_least_likely_attacks_move_toward_ll_class(tiny, attack):
    model, x, y = tiny
    with torch.no_grad():
        clean = model(x)
    ll = clean.argmin(1)
    r = attack(model, x, y)
    assert torch.equal(r.target, ll)
    before, after = _ll_prob(model, x, ll), _ll_prob(model, r.adversarial, ll)
    ce_before = F.cross_entropy(clean, ll, reduction="none")
    with torch.no_grad():
        ce_after = F.cross_entropy(model(r.adversarial), ll, reduction="none")
    assert (ce_after < ce_before).all()  # every sample moved toward y_LL
    assert after.mean() > 10 * before.mean()
    assert (r.perturbation.abs().amax() <= attack.eps + 1e-6)
    with pytest.raises(ConfigError, match="least-likely"):
        attack(model, x, y, target=y)


def test_iter_ll_succeeds_with_budget(tiny):
    model, x, y = tiny
    # measured on this model: 32/255 -> 6% reach y_LL (50% misclassified), 64/255 -> 100%
    r = IterLL(eps=64 / 255, alpha=4 / 255, steps=30)(model, x, y)
    assert r.success_rate >= 0.9
    assert torch.equal(r.success, r.predictions == r.target)


def test_pgd_l2_stays_in_ball(tiny):
    model, x, y = tiny
    for rs in (False, True):
        r = PGDL2(eps=0.5, alpha=0.1, steps=10, random_start=rs)(model, x, y)
        assert r.norms(2).max().item() <= 0.5 + 1e-5
        assert r.adversarial.min() >= 0 and r.adversarial.max() <= 1
        assert r.norms(2).mean().item() > 0.4  # it uses the budget
    strong = PGDL2(eps=3.0, alpha=0.5, steps=20, random_start=False)(model, x, y)
    assert strong.success_rate > 0.9 and strong.norms(2).max() <= 3.0 + 1e-5


def test_pgd_linf_success_grows_with_eps(tiny):
    model, x, y = tiny
    rates = [PGD(eps=e / 255, alpha=e / 255 / 4, steps=10, random_start=False)(model, x, y).success_rate for e in (4, 16, 48)]
    assert rates[0] <= rates[1] <= rates[2] and rates[2] >= 0.9


def test_random_start_pgd_replays_bit_identically(tiny):
    model, x, y = tiny
    a = PGD(eps=8 / 255, steps=3, random_start=True)
    r1 = a(model, x, y, generator=torch.Generator().manual_seed(11))
    r2 = a(model, x, y, generator=torch.Generator().manual_seed(11))
    r3 = a(model, x, y, generator=torch.Generator().manual_seed(12))
    assert torch.equal(r1.adversarial, r2.adversarial)
    assert not torch.equal(r1.adversarial, r3.adversarial)
    assert r1.seed == 11
    # the default generator is seeded from the attack's ``seed``, and the stored state replays it
    d1, d2 = a(model, x, y), PGD(eps=8 / 255, steps=3, seed=0)(model, x, y)
    assert torch.equal(d1.adversarial, d2.adversarial) and d1.seed == 0
    g = torch.Generator()
    g.set_state(r1.generator_state)
    assert torch.equal(a(model, x, y, generator=g).adversarial, r1.adversarial)
    # random start != no random start
    assert not torch.equal(r1.adversarial, a.replace(random_start=False)(model, x, y).adversarial)


def test_fooling_images_reach_99_percent(tiny):
    model, x, _ = tiny
    classes = torch.arange(10)
    template = torch.zeros(10, 3, 32, 32)
    r = FoolingImages(steps=200)(model, template, classes, generator=torch.Generator().manual_seed(3))
    conf = r.extras["confidence"]
    assert (conf >= 0.99).all(), conf
    assert r.success.all() and torch.equal(r.predictions, classes)
    # it started from noise: the starting point is far from any class image, and it is the generator's noise
    start = r.adversarial - r.perturbation
    assert 0.45 < start.mean().item() < 0.55 and start.std().item() > 0.25
    again = FoolingImages(steps=200)(model, template, classes, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.adversarial, r.adversarial)


# ------------------------------------------------------------------------------------------- EOT
class ShiftBrightness:
    """Differentiable random transform for tests: per-image integer roll (±2 px) and brightness (±0.1)."""

    def __init__(self) -> None:
        self.calls = 0
        self.last_params = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        shift = torch.randint(-2, 3, (n, 2), generator=generator)
        bright = (torch.rand(n, generator=generator) * 2 - 1) * 0.1
        self.calls += 1
        self.last_params = {"shift": shift.tolist(), "brightness": bright.tolist()}
        rolled = torch.stack([torch.roll(x[i], shifts=(int(s[0]), int(s[1])), dims=(1, 2)) for i, s in enumerate(shift)])
        return (rolled + bright.view(-1, 1, 1, 1)).clamp(0, 1)

    def config(self):
        return {"transform": "shift_brightness", "max_shift": 2, "max_brightness": 0.1}


class CountingModel(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return self.net(x)


def test_eot_batches_samples_into_one_forward(tiny):
    model, x, y = tiny
    counting = CountingModel(model)
    eot = ShiftBrightness()
    r = PGD(eps=8 / 255, steps=3, random_start=False, eot=eot, eot_samples=4, record_transforms=True)(counting, x, y)
    # 3 steps, each one forward pass of 4 x 16 transformed copies; then one clean pass for the predictions
    assert counting.batch_sizes == [64, 64, 64, 16]
    assert eot.calls == 3
    assert len(r.transform_params) == 3 and len(r.transform_params[0]["shift"]) == 64
    assert r.config["eot"] == eot.config() and r.config["eot_samples"] == 4


def test_eot_gradient_is_an_average_and_replayable(tiny):
    model, x, y = tiny
    eot = ShiftBrightness()
    plain = PGD(eps=8 / 255, steps=1, random_start=False)
    one = plain.replace(eot=eot, eot_samples=1)
    many = plain.replace(eot=eot, eot_samples=16)
    _, g_plain = plain.loss_and_grad(model, x, y, False, torch.Generator().manual_seed(0))
    _, g_one = one.loss_and_grad(model, x, y, False, torch.Generator().manual_seed(0))
    _, g_many = many.loss_and_grad(model, x, y, False, torch.Generator().manual_seed(0))
    _, g_many2 = many.loss_and_grad(model, x, y, False, torch.Generator().manual_seed(0))
    _, g_many3 = many.loss_and_grad(model, x, y, False, torch.Generator().manual_seed(1))
    assert not torch.allclose(g_many, g_one, atol=1e-7)
    assert not torch.allclose(g_many, g_plain, atol=1e-7)
    assert torch.equal(g_many, g_many2)  # the draw comes from the generator: same seed, same gradient
    assert not torch.equal(g_many, g_many3)
    # the averaged gradient equals the mean of the per-copy gradients computed one copy at a time
    xt_params = torch.Generator().manual_seed(0)
    eot_ref = ShiftBrightness()
    xr = x.clone().requires_grad_(True)
    out = eot_ref(xr.repeat(16, 1, 1, 1), xt_params)
    loss = -F.cross_entropy(model(out), y.repeat(16))
    (g_ref,) = torch.autograd.grad(loss, xr)
    assert torch.allclose(g_many, g_ref, atol=1e-7)
    # whole attacks replay bit for bit from the seed, and all EOT attacks accept the transform
    a = PGD(eps=8 / 255, steps=2, eot=eot, eot_samples=4)
    assert torch.equal(a(model, x, y, generator=torch.Generator().manual_seed(5)).adversarial,
                       a(model, x, y, generator=torch.Generator().manual_seed(5)).adversarial)
    for attack in (FGSM(eot=eot, eot_samples=2), BIM(eps=4 / 255, eot=eot, eot_samples=2),
                   DeepFool(steps=3, eot=eot, eot_samples=2),
                   CarliniWagnerL2(binary_search_steps=1, steps=3, eot=eot, eot_samples=2),
                   FoolingImages(steps=2, eot=eot, eot_samples=2)):
        r = attack(model, x[:4], y[:4])
        assert r.adversarial.shape == x[:4].shape and torch.isfinite(r.adversarial).all()


class FixedCopies:
    """A deterministic 'transform': the i-th copy of the batch (of 16) seen since the last reset is scaled by
    (1 - 0.05 * (i mod 4)), whatever the split, so one pass of S*B images and S passes of B see the same copies."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = (self.seen + torch.arange(x.shape[0]) // 16) % 4
        self.seen += x.shape[0] // 16
        return x * (1 - 0.05 * k.float()).view(-1, 1, 1, 1)


def test_eot_batch_micro_batches_and_keeps_the_gradient(tiny):
    """eot_batch=k runs S/k passes of k*B images and sums their gradients: the same loss and gradient as one pass
    of S*B images (torchattacks' EOTPGD does S passes of B), at a fraction of the peak memory."""
    model, x, y = tiny
    counting = CountingModel(model)
    copies = FixedCopies()
    full = PGD(eps=8 / 255, steps=1, random_start=False, eot=copies, eot_samples=4)
    g = torch.Generator().manual_seed(0)
    loss_full, grad_full = full.loss_and_grad(counting, x, y, False, g)
    assert counting.batch_sizes == [64]
    assert not torch.allclose(grad_full, PGD(eps=8 / 255, steps=1, random_start=False).loss_and_grad(
        model, x, y, False, g)[1], atol=1e-7)  # the copies differ from the plain image
    for k, passes in ((1, [16, 16, 16, 16]), (2, [32, 32])):
        counting.batch_sizes.clear()
        copies.seen = 0
        loss_k, grad_k = full.replace(eot_batch=k).loss_and_grad(counting, x, y, False, g)
        assert counting.batch_sizes == passes
        assert torch.allclose(loss_k, loss_full, atol=1e-6) and torch.allclose(grad_k, grad_full, atol=1e-7)
    with pytest.raises(ConfigError, match="eot_batch=3 must divide eot_samples=4"):
        full.replace(eot_batch=3)
    with pytest.raises(ConfigError, match="eot_batch"):
        full.replace(eot_batch=0)


def test_eot_attack_survives_transforms_better(tiny):
    """An L∞ PGD under EOT fools more fresh transformed copies than the same PGD without it."""
    model, x, y = tiny
    eot = ShiftBrightness()
    base = PGD(eps=12 / 255, alpha=2 / 255, steps=10, random_start=False)
    plain = base(model, x, y)
    robust = base.replace(eot=eot, eot_samples=8)(model, x, y, generator=torch.Generator().manual_seed(1))
    rates = []  # evaluation draws (seed 999) are never the optimisation's (seed 1)
    for adv in (plain.adversarial, robust.adversarial):
        g = torch.Generator().manual_seed(999)
        with torch.no_grad():
            z = model(eot(adv.repeat(20, 1, 1, 1), g))
        rates.append((z.argmax(1) != y.repeat(20)).float().mean().item())
    assert rates[1] > rates[0], rates


# ------------------------------------------------------------------------------------------- API hygiene
def test_model_state_untouched(tiny):
    model, x, y = tiny
    for p in model.parameters():
        p.requires_grad_(True)
    model.train(False)
    try:
        for attack in (FGSM(), PGD(steps=2), DeepFool(steps=2), CarliniWagnerL2(binary_search_steps=1, steps=2)):
            attack(model, x[:4], y[:4])
            assert all(p.grad is None for p in model.parameters()), attack.name
            assert all(p.requires_grad for p in model.parameters())
            assert not model.training
    finally:
        for p in model.parameters():
            p.requires_grad_(False)


def test_result_and_config(tiny):
    model, x, y = tiny
    import json

    r = PGD(eps=4 / 255, steps=3)(model, x, y)
    assert len(r.loss_history) == 3
    assert r.loss_history[-1] < r.loss_history[0]  # the attacker's loss goes down
    s = json.dumps(r.summary())
    assert '"attack": "pgd"' in s
    assert r.success.dtype == torch.bool and r.success.shape == (16,)
    assert torch.allclose(r.perturbation, r.adversarial - x)
    rebuilt = get_attack(r.config["attack"], **{k: v for k, v in r.config.items() if k != "attack"})
    assert rebuilt == PGD(eps=4 / 255, steps=3)


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: PGD(eps=1.5), "eps must be <= 1.0, got 1.5"),
        (lambda: PGD(eps=-0.1), "eps must be >= 0.0, got -0.1"),
        (lambda: PGD(steps=0), "steps must be an integer >= 1, got 0"),
        (lambda: PGD(alpha=0.0), "alpha must be > 0.0"),
        (lambda: PGD(norm="l1"), "norm must be one of"),
        (lambda: PGD(eot_samples=4), "eot_samples=4 needs an eot"),
        (lambda: PGD(eot=ShiftBrightness(), eot_samples=0), "eot_samples must be an integer >= 1, got 0"),
        (lambda: FGSM(steps=3), "FGSM is one"),
        (lambda: CarliniWagnerL2(lr=-1.0), "lr must be > 0.0, got -1.0"),
        (lambda: CarliniWagnerL2(loss="ce"), "loss must be 'cw'"),
        (lambda: DeepFool(candidates=1), "candidates must be an integer >= 2, got 1"),
        (lambda: FoolingImages(confidence=1.5), "confidence must be <= 1.0, got 1.5"),
        (lambda: PGD(kappa=float("nan")), "kappa must be a finite number"),
        (lambda: PGD(seed=-1), "seed must be an integer >= 0, got -1"),
    ],
)
def test_hyperparameter_validation(build, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        build()


def test_input_validation(tiny):
    model, x, y = tiny
    with pytest.raises(ImageError, match="float64"):
        FGSM()(model, x.double(), y)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        FGSM()(model, x * 2, y)
    with pytest.raises(ConfigError, match=r"shape \(16,\)"):
        FGSM()(model, x, y[:3])
    with pytest.raises(ConfigError, match="untargeted"):
        DeepFool()(model, x, y, target=y)


def test_registry():
    names = list_attacks()
    for n in ("fgsm", "step_ll", "bim", "iter_ll", "pgd", "pgd_l2", "cw_l2", "deepfool", "fooling"):
        assert n in names
    assert isinstance(get_attack("bim", eps=4 / 255), BIM)
    with pytest.raises(ConfigError, match="unknown attack 'nope'; known attacks: bim, cw_l2"):
        get_attack("nope")
    with pytest.raises(ConfigError, match=r"no hyper-parameter\(s\) \['epsilon'\]"):
        get_attack("pgd", epsilon=0.1)
    with pytest.raises(ConfigError, match="already registered"):
        register_attack(PGD)


# ------------------------------------------------------------------------------------------- sanity helpers
class Quantised(nn.Module):
    """Gradient masking by input quantisation: torch.round has zero gradient everywhere."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 8) / 8)


def test_zero_gradient_fraction(tiny):
    model, x, y = tiny
    healthy = zero_gradient_fraction(model, x, y)
    masked = zero_gradient_fraction(Quantised(model), x, y)
    assert healthy.zero_fraction < 0.05 and not healthy.suspicious
    assert masked.zero_fraction == 1.0 and masked.all_zero_samples == 16 and masked.suspicious


def test_check_stronger(tiny):
    model, x, y = tiny
    weak, strong = FGSM(eps=16 / 255), PGD(eps=16 / 255, alpha=2 / 255, steps=20, random_start=False)
    ok = check_stronger(model, x, y, weak, strong)
    assert ok.passed and ok.strong_success_rate >= ok.weak_success_rate
    assert ok.strong_loss >= ok.weak_loss  # true-label CE is higher at the stronger attack's images
    # a "stronger" attack that is in fact weaker (tiny budget) is flagged
    bad = check_stronger(model, x, y, PGD(eps=48 / 255, alpha=4 / 255, steps=20, random_start=False), FGSM(eps=1 / 255))
    assert not bad.passed and "gradient masking" in bad.message


# ------------------------------------------------------------------------------------------- CLI
def test_cli_attack_digital(tmp_path):
    import argparse
    import json

    import numpy as np

    from physical.cli import add_parser

    parser = argparse.ArgumentParser(prog="testbed")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "run"
    args = parser.parse_args(
        ["attack", "digital", "--attack", "bim", "--eps", "4", "--steps", "2", "--model", "mobilenet_v2",
         "--image", "chelsea", "--out", str(out), "--param", "loss=\"ce\""]
    )
    try:
        rc = args.func(args)
    except TestbedError as exc:
        if "mobilenet_v2" in str(exc) or "asset" in str(exc).lower():
            pytest.skip(f"mobilenet_v2 unavailable: {exc}")
        raise
    assert rc == 0
    report = json.loads((out / "result.json").read_text())
    assert report["config"]["attack"] == "bim" and report["config"]["eps"] == pytest.approx(4 / 255)
    assert len(report["loss_history"]) == 2
    pert = torch.load(out / "perturbation.pt")
    assert pert.shape == (1, 3, 224, 224) and pert.abs().max() <= 4 / 255 + 1e-6
    assert np.array_equal(np.load(out / "perturbation.npy"), pert.numpy())
    assert (out / "adversarial.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        bad = parser.parse_args(["attack", "digital", "--attack", "pgd", "--image", "x", "--out", str(out), "--param", "oops"])
        bad.func(bad)


def test_channels_last_same_result_and_model_restored(tiny):
    """channels_last=True runs the model in NHWC during the attack: the same adversarial images (up to float
    rounding), and the caller's model comes back with its layout and requires_grad flags."""
    model, x, y = tiny
    flags = [p.requires_grad for p in model.parameters()]
    a = PGD(eps=8 / 255, alpha=2 / 255, steps=3, random_start=False)
    r0 = a(model, x, y)
    r1 = a.replace(channels_last=True)(model, x, y)
    assert (r0.adversarial - r1.adversarial).abs().max() <= 2 / 255 + 1e-6  # at most one step apart anywhere
    assert (r0.adversarial != r1.adversarial).float().mean() < 0.01
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.is_contiguous() for p in model.parameters())
    with pytest.raises(ConfigError, match="channels_last must be True or False"):
        PGD(channels_last="yes")
