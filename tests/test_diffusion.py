"""Gaussian diffusion as DiT (App. D): closed forms of the hybrid loss, exact samplers, guidance, overfitting."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from anchorface.config import DiffusionConfig
from anchorface.diffusion.gaussian import GaussianDiffusion, discretized_gaussian_log_likelihood
from anchorface.errors import AnchorfaceError
from anchorface.diffusion.sampling import (SAMPLERS, FrameSolver, guided, learns_sigma, predicted_x0, sample_loop,
                                           scheduler_step)
from anchorface.methods.anchored.sdit import SDiT, SDiTConfig

SHAPE = (2, 3, 4, 4, 4)  # B, T, C, H, W


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(DiffusionConfig())


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_schedule_is_dits_linear_schedule(diffusion):
    assert diffusion.betas.dtype == np.float64 and len(diffusion.betas) == 1000
    assert diffusion.betas[0] == pytest.approx(1e-4) and diffusion.betas[-1] == pytest.approx(0.02)
    x0, noise, t = rand(*SHAPE), rand(*SHAPE, seed=1), torch.tensor([0, 999])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    expect = torch.stack([math.sqrt(abar[s]) * x0[i] + math.sqrt(1 - abar[s]) * noise[i]
                          for i, s in enumerate([0, 999])])
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), expect)


def test_vb_equals_closed_form_gaussian_kl(diffusion):
    x0, x_t = rand(*SHAPE, seed=0, dtype=torch.float64), rand(*SHAPE, seed=1, dtype=torch.float64)
    eps_hat, v = rand(*SHAPE, seed=2, dtype=torch.float64), rand(*SHAPE, seed=3, dtype=torch.float64).tanh()
    t = torch.tensor([10, 700])
    vb = diffusion.vb_terms_bpd(torch.cat([eps_hat, v], dim=2).float(), x0.float(), x_t.float(), t)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    for i, s in enumerate(t.tolist()):
        a, a_prev, beta = abar[s], abar[s - 1], betas[s]
        post_var = beta * (1 - a_prev) / (1 - a)

        def post_mean(x0_, a=a, a_prev=a_prev, beta=beta, x_t=x_t[i]):
            return (beta * math.sqrt(a_prev) * x0_ + (1 - a_prev) * math.sqrt(1 - beta) * x_t) / (1 - a)

        pred_x0 = (x_t[i] - math.sqrt(1 - a) * eps_hat[i]) / math.sqrt(a)
        frac = (v[i] + 1) / 2
        model_var = torch.exp(frac * math.log(beta) + (1 - frac) * math.log(post_var))
        kl = kl_divergence(Normal(post_mean(x0[i]), math.sqrt(post_var)), Normal(post_mean(pred_x0), model_var.sqrt()))
        assert vb[i].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-4)


def test_vb_at_t0_is_the_discretized_decoder_nll(diffusion):
    x0 = rand(*SHAPE, seed=0).clamp(-0.95, 0.95)  # interior bins only
    x_t, out = rand(*SHAPE, seed=1) * 0.01 + x0, torch.cat([rand(*SHAPE, seed=2), torch.zeros(SHAPE)], dim=2)
    t = torch.zeros(2, dtype=torch.long)
    vb = diffusion.vb_terms_bpd(out, x0, x_t, t)
    p = diffusion.p_mean_variance(out, x_t, t)
    dist = Normal(p["mean"].double(), p["variance"].double().sqrt())
    ll = torch.log(dist.cdf(x0.double() + 1 / 255) - dist.cdf(x0.double() - 1 / 255))
    torch.testing.assert_close(vb.double(), -ll.flatten(1).mean(1) / math.log(2), rtol=1e-4, atol=1e-5)
    # edge bins integrate to +-infinity
    edge = discretized_gaussian_log_likelihood(torch.tensor([-1.0, 1.0]), torch.zeros(2), torch.zeros(2))
    torch.testing.assert_close(edge, torch.log(Normal(0.0, 1.0).cdf(torch.tensor(-1 + 1 / 255))).repeat(2))


def test_training_losses_weighting_and_stop_gradient(diffusion):
    x0, noise = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1)
    t = torch.tensor([5, 400])
    x_t = diffusion.q_sample(x0, t, noise)
    out = torch.cat([rand(*SHAPE, seed=2), rand(*SHAPE, seed=3).tanh()], dim=2).requires_grad_()
    weight = torch.ones(2, 3, 1, 4, 4)
    weight[:, :, :, 1:3, 1:3] = 2.0  # the (1 + λ_ex) map on "expressive" pixels
    losses = diffusion.training_losses(out, x0, x_t, t, noise, weight=weight)
    expect = (weight * (noise - out[:, :, :4]) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(losses["mse"], expect)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    assert (losses["vb"] > 0).all()
    # vb trains only the variance channels, mse only the eps channels
    (g_vb,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    (g_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert g_vb[:, :, :4].abs().max() == 0 and g_vb[:, :, 4:].abs().max() > 0
    assert g_mse[:, :, 4:].abs().max() == 0 and g_mse[:, :, :4].abs().max() > 0
    # an eps-only output (no learned sigma) gives vb = 0
    assert diffusion.training_losses(out[:, :, :4], x0, x_t, t, noise)["vb"].abs().max() == 0


def oracle(diffusion, x0):
    """A perfect denoiser for one known x0: the true noise of x_t at the current timestep (or the true v, or x0
    itself, for a v- or x0-prediction diffusion); variance channels 0."""
    abar = torch.from_numpy(diffusion.alphas_cumprod)

    def model_fn(x, t):
        a = abar[t].view(-1, 1, 1, 1, 1)
        eps = (x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
        pred = {"epsilon": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0.double(),
                "x0": x0.double().expand_as(eps)}[diffusion.prediction]
        return torch.cat([pred.float(), torch.zeros_like(x)], dim=2)

    return model_fn


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("steps", [1000, 50, 10])
def test_v_and_x0_prediction_oracles_reconstruct_x0(prediction, kind, steps):
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    x0 = rand(*SHAPE, seed=0)
    x = sample_loop(oracle(diffusion, x0), rand(*SHAPE, seed=1), diffusion.make_scheduler(kind, steps),
                    generator=torch.Generator().manual_seed(0), eta=1.0, progress=False)
    assert (x - x0).abs().max() < 1e-4


def test_v_prediction_loss_targets_v_and_its_vb_equals_the_eps_models():
    """The same denoiser written as ε or as v: the VB terms agree, and the v-model's MSE is against
    v = sqrt(abar) ε - sqrt(1 - abar) x0."""
    eps_diff, v_diff = GaussianDiffusion(DiffusionConfig()), GaussianDiffusion(DiffusionConfig(prediction="v"))
    x0, noise, eps_hat, var = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    t = torch.tensor([0, 700])
    x_t = eps_diff.q_sample(x0, t, noise)
    a = torch.from_numpy(eps_diff.alphas_cumprod)[t].float().view(-1, 1, 1, 1, 1)
    v_hat = (eps_hat - (1 - a).sqrt() * x_t) / a.sqrt()  # the v whose implied eps is eps_hat
    le = eps_diff.training_losses(torch.cat([eps_hat, var.tanh()], 2), x0, x_t, t, noise)
    lv = v_diff.training_losses(torch.cat([v_hat, var.tanh()], 2), x0, x_t, t, noise)
    torch.testing.assert_close(lv["vb"], le["vb"], rtol=1e-3, atol=1e-4)
    v_true = a.sqrt() * noise - (1 - a).sqrt() * x0
    torch.testing.assert_close(lv["mse"], ((v_true - v_hat) ** 2).flatten(1).mean(1))
    with pytest.raises(Exception, match="prediction"):
        GaussianDiffusion(DiffusionConfig(prediction="sample"))
    with pytest.raises(Exception, match="x0_loss_snr_cap"):  # a negative weight would train the error up
        GaussianDiffusion(DiffusionConfig(prediction="x0", x0_loss_snr_cap=-1.0))


@pytest.mark.parametrize("bad", [dict(beta_end=2.0), dict(beta_start=0.0), dict(beta_start=0.03), dict(num_timesteps=1),
                                 dict(num_timesteps=10**12)])
def test_a_schedule_from_a_corrupt_checkpoint_is_a_one_line_error(bad):
    with pytest.raises(AnchorfaceError, match="diffusion"):  # not NaN videos, nor a 7 TiB allocation
        GaussianDiffusion(DiffusionConfig(**bad))


@pytest.mark.parametrize("cap", [5.0, 1e9])
def test_x0_prediction_loss_is_the_truncated_v_loss_and_its_vb_equals_the_eps_models(cap):
    """x0-prediction (for wide pixel-codec tokens): the MSE is (1 + min(SNR_t, cap)) |x0 - x0_hat|^2, which with no
    cap is exactly the v-loss of the same denoiser; the VB term sees the implied ε."""
    eps_diff = GaussianDiffusion(DiffusionConfig())
    x_diff = GaussianDiffusion(DiffusionConfig(prediction="x0", x0_loss_snr_cap=cap))
    v_diff = GaussianDiffusion(DiffusionConfig(prediction="v"))
    x0, noise, x0_hat, var = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1), rand(*SHAPE, seed=2), rand(*SHAPE, seed=3)
    t = torch.tensor([3, 700])
    x_t = eps_diff.q_sample(x0, t, noise)
    a = torch.from_numpy(eps_diff.alphas_cumprod)[t].float().view(-1, 1, 1, 1, 1)
    eps_hat = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()
    lx = x_diff.training_losses(torch.cat([x0_hat, var.tanh()], 2), x0, x_t, t, noise)
    le = eps_diff.training_losses(torch.cat([eps_hat, var.tanh()], 2), x0, x_t, t, noise)
    torch.testing.assert_close(lx["vb"], le["vb"], rtol=1e-3, atol=1e-4)
    snr = a / (1 - a)
    torch.testing.assert_close(lx["mse"], ((1 + snr.clamp(max=cap)) * (x0 - x0_hat) ** 2).flatten(1).mean(1),
                               rtol=1e-4, atol=1e-6)
    if cap > 1e6:  # untruncated: the v-loss
        v_hat = a.sqrt() * eps_hat - (1 - a).sqrt() * x0_hat
        lv = v_diff.training_losses(torch.cat([v_hat, var.tanh()], 2), x0, x_t, t, noise)
        torch.testing.assert_close(lx["mse"], lv["mse"], rtol=1e-3, atol=1e-5)


def test_sample_clip_bounds_the_predicted_x0():
    clipped = GaussianDiffusion(DiffusionConfig(sample_clip=1.0)).make_scheduler("ddim", 10)
    assert clipped.config.clip_sample and clipped.config.clip_sample_range == 1.0
    assert not GaussianDiffusion(DiffusionConfig()).make_scheduler("ddim", 10).config.clip_sample


@pytest.mark.parametrize("kind", SAMPLERS)
@pytest.mark.parametrize("steps", [1000, 250, 50, 10])
def test_oracle_denoiser_reconstructs_x0(diffusion, kind, steps):
    x0 = rand(*SHAPE, seed=0)
    scheduler = diffusion.make_scheduler(kind, steps)
    assert len(scheduler.timesteps) == steps
    x = sample_loop(oracle(diffusion, x0), rand(*SHAPE, seed=1), scheduler, generator=torch.Generator().manual_seed(0),
                    eta=1.0, progress=False)
    assert (x - x0).abs().max() < 1e-4


def test_ddpm_respacing_is_dits_and_uses_the_same_betas(diffusion):
    sched = diffusion.make_scheduler("ddpm", 250)
    # DiT's space_timesteps(1000, "250"): evenly spaced with a fractional stride, rounded, both ends included
    stride, idx, ref = 999 / 249, 0.0, []
    for _ in range(250):
        ref.append(round(idx))
        idx += stride
    assert sched.timesteps.tolist() == ref[::-1]
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), diffusion.alphas_cumprod, rtol=1e-5)
    assert diffusion.make_scheduler("ddim", 250).timesteps.tolist() == list(range(996, -1, -4))  # DiT's ddim250


@pytest.mark.parametrize("t", [1, 4, 10, 500])
def test_ddpm_learned_range_step_is_p_mean_variance(diffusion, t):
    """One DDPM step of the diffusers scheduler at steps=1000 (no respacing) with a learned variance v != 0 draws
    from p(x_{t-1} | x_t) of `GaussianDiffusion.p_mean_variance` (improved DDPM's interpolation, the one the
    hybrid loss trains): x_{t-1} = mean + sqrt(variance) z, with z the generator's standard normal draw. The
    learned range log(beta_t) - log(posterior variance) is wide at small t (0.79 at t = 1, 0.15 at t = 10) and
    vanishes at large t (9e-4 at t = 500), where the control below could not tell v apart."""
    sched = diffusion.make_scheduler("ddpm", 1000)
    B, T, C, H, W = SHAPE
    x, eps = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1)
    v = torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)) * 1.6 - 0.8  # in (-0.8, 0.8)
    v[v.abs() < 0.05] = 0.5  # v != 0 everywhere
    out = torch.cat([eps, v], dim=2)
    prev = scheduler_step(sched, out, t, x, generator=torch.Generator().manual_seed(7))
    z = torch.randn((B * T, C, H, W), generator=torch.Generator().manual_seed(7)).reshape(SHAPE)
    p = diffusion.p_mean_variance(out, x, torch.full((B,), t))
    torch.testing.assert_close(prev, p["mean"] + p["variance"].sqrt() * z, rtol=1e-4, atol=1e-5)
    if t <= 10:  # control: the variance channel is used (v = 0 gives another sample)
        other = scheduler_step(sched, torch.cat([eps, torch.zeros_like(v)], dim=2), t, x,
                               generator=torch.Generator().manual_seed(7))
        assert (other - prev).abs().max() > 3e-4


@pytest.mark.parametrize("steps", [1000, 250, 50])
def test_ddpm_learned_variance_stays_between_its_bounds(diffusion, steps):
    """v outside [-1, 1] (a briefly trained model predicts up to ~14 at small t) is clamped: the step's noise
    variance stays in [posterior variance, beta] of the (respaced) schedule instead of extrapolating past beta."""
    sched = diffusion.make_scheduler("ddpm", steps)
    B, T, C, H, W = SHAPE
    x, eps = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1)
    t = int(sched.timesteps[-2])  # the last step that draws noise: the widest range
    lo = scheduler_step(sched, torch.cat([eps, torch.full(SHAPE, -1.0)], dim=2), t, x,
                        generator=torch.Generator().manual_seed(7))
    hi = scheduler_step(sched, torch.cat([eps, torch.full(SHAPE, 1.0)], dim=2), t, x,
                        generator=torch.Generator().manual_seed(7))
    far = scheduler_step(sched, torch.cat([eps, torch.full(SHAPE, 14.0)], dim=2), t, x,
                         generator=torch.Generator().manual_seed(7))
    assert torch.equal(far, hi)  # clamped to v = 1 (frac = 1: beta_t)
    below = scheduler_step(sched, torch.cat([eps, torch.full(SHAPE, -9.0)], dim=2), t, x,
                           generator=torch.Generator().manual_seed(7))
    assert torch.equal(below, lo)  # clamped to v = -1 (frac = 0: the posterior variance)
    assert (hi - lo).abs().max() > 1e-4  # control: v moves the sample within its range


def test_learns_sigma_reads_the_model_config():
    cfg = dict(input_size=4, in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_frames=2,
               global_dim=0, landmark_dim=6)
    assert learns_sigma(SDiT(SDiTConfig(**cfg))) is True
    assert learns_sigma(SDiT(SDiTConfig(**cfg, learn_sigma=False))) is False
    assert learns_sigma(torch.nn.Identity()) is True  # no config: DiT's default, a [eps, v] output


def test_per_frame_generators_make_noise_independent_of_batch(diffusion):
    x0, x_T = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1)
    B, T = SHAPE[:2]

    def gens(rows):
        return [torch.Generator().manual_seed(100 * b + i) for b in rows for i in range(T)]

    model_fn = oracle(diffusion, x0)
    sched = diffusion.make_scheduler("ddpm", 10)
    t = sched.timesteps[0]
    out = model_fn(x_T, torch.full((B,), int(t)))
    both = scheduler_step(sched, out, t, x_T, generator=gens(range(B)))
    second = scheduler_step(sched, out[1:], t, x_T[1:], generator=gens([1]))
    assert torch.equal(both[1:], second)
    # control: one shared generator gives row 1 different noise when it is not first in the batch
    shared = scheduler_step(sched, out, t, x_T, generator=torch.Generator().manual_seed(0))
    alone = scheduler_step(sched, out[1:], t, x_T[1:], generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(shared[1:], alone)
    with pytest.raises(ValueError, match="one generator per frame"):
        scheduler_step(sched, out, t, x_T, generator=gens([0]))


def test_classifier_free_guidance():
    cond, uncond = rand(*SHAPE[:2], 8, 4, 4, seed=0), rand(*SHAPE[:2], 8, 4, 4, seed=1)
    assert torch.equal(guided(cond, uncond, 1.0, 4), cond)
    for s in (0.0, 2.5):
        out = guided(cond, uncond, s, 4)
        torch.testing.assert_close(out[:, :, :4], uncond[:, :, :4] + s * (cond[:, :, :4] - uncond[:, :, :4]))
        assert torch.equal(out[:, :, 4:], cond[:, :, 4:])


def test_tiny_sdit_overfits_one_batch(diffusion):
    torch.manual_seed(0)
    cfg = SDiTConfig(input_size=8, in_channels=4, patch_size=2, hidden_size=64, depth=2, num_heads=4, global_dim=8,
                     landmark_dim=6, num_frames=2)
    model = SDiT(cfg)
    x0, noise = rand(2, 2, 4, 8, 8, seed=0), rand(2, 2, 4, 8, 8, seed=1)
    g, lmk, t = rand(2, 8, seed=2), rand(2, 2, 6, seed=3), torch.tensor([50, 300])
    x_t = diffusion.q_sample(x0, t, noise)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0)
    losses = []
    for _ in range(300):
        loss = diffusion.training_losses(model(x_t, t, g, lmk), x0, x_t, t, noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] / min(losses[-10:]) >= 10, (losses[0], losses[-10:])


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_x0_from_prediction_inverts_the_target(prediction):
    """The exact target of each parameterisation maps back to x0 (closed form of q_sample)."""
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([3, 700])
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.x0_from_prediction(d.target(x0, noise, t), x_t, t), x0, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", SAMPLERS)
def test_frame_solver_on_any_subsets_equals_one_batch(diffusion, kind):
    """Frames updated in varying subsets at every step (as micro-batches do) give the result of updating all
    frames at once: the multistep solvers' history is kept per frame. Per-frame generators for DDPM's noise."""
    N, shape, steps = 7, (4, 4, 4), 6

    def model_fn(x, t):  # a fixed non-linear denoiser, frame-wise
        return torch.cat([torch.tanh(x * (1 + int(t) / 500)), torch.zeros_like(x)], dim=1)

    def gens(k, frames):
        return [torch.Generator().manual_seed(1000 * k + int(f)) for f in frames]

    x_T = rand(N, *shape, seed=3)
    sched = diffusion.make_scheduler(kind, steps)
    ref = x_T.clone()
    for k, t in enumerate(sched.timesteps):
        ref = scheduler_step(sched, model_fn(ref, t)[None], t, ref[None], generator=gens(k, range(N)))[0]
    solver, z = FrameSolver(diffusion.make_scheduler(kind, steps), N), x_T.clone()
    rng = np.random.default_rng(0)
    for k, t in enumerate(solver.scheduler.timesteps):
        order = rng.permutation(N)
        for chunk in np.split(order, np.sort(rng.choice(np.arange(1, N), 2, replace=False))):
            idx = torch.as_tensor(chunk)
            z[idx] = solver.step(k, t, idx, model_fn(z[idx], t), z[idx], generator=gens(k, chunk))
    assert torch.isfinite(ref).all() and (ref - x_T).abs().max() > 0.1
    assert (z - ref).abs().max().item() <= 1e-6, kind


@pytest.mark.parametrize("prediction", ["epsilon", "v", "x0"])
def test_multistep_solvers_get_the_clipped_x0(prediction):
    diffusion = GaussianDiffusion(DiffusionConfig(prediction=prediction, sample_clip=1.0))
    sched = diffusion.make_scheduler("dpmpp-2m", 10)
    x0, x = 3 * rand(2, 4, 4, 4, seed=0), rand(2, 4, 4, 4, seed=1)
    t = 600
    a = torch.tensor(diffusion.alphas_cumprod[t])
    eps = ((x - a.sqrt() * x0) / (1 - a).sqrt()).float()
    pred = {"epsilon": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0, "x0": x0}[prediction].float()
    torch.testing.assert_close(predicted_x0(sched, pred, t, x), x0.clamp(-1, 1), atol=2e-5, rtol=1e-5)
    assert diffusion.make_scheduler("unipc", 10).anchorface_clip == 1.0
    assert GaussianDiffusion(DiffusionConfig()).make_scheduler("unipc", 10).anchorface_clip is None
