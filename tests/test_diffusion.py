"""The diffusion core: schedules, respacing, q and p, DDPM/DDIM steps, the training loss, precision."""

from __future__ import annotations

import math

import pytest
import torch

from gdp_lightning.diffusion import (
    GaussianDiffusion,
    MeanVariance,
    discretized_gaussian_log_likelihood,
    named_beta_schedule,
    normal_kl,
    randn,
    space_timesteps,
)
from gdp_lightning.prior import get_preset
from gdp_lightning.prior.spec import DiffusionSettings

from .helpers import _tiny


def _diffusion(var_type="learned_range", schedule="linear", steps=1000, respacing="", **kw) -> GaussianDiffusion:
    settings = DiffusionSettings(
        noise_schedule=schedule, diffusion_steps=steps, sigma_small=var_type == "fixed_small", **kw
    )
    return GaussianDiffusion.from_settings(settings, learn_sigma=var_type == "learned_range", respacing=respacing)


# ---------------------------------------------------------------- schedules
def test_linear_schedule_endpoints_and_scaling():
    b = named_beta_schedule("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4, abs=0) and b[-1].item() == pytest.approx(0.02, abs=0)
    b4k = named_beta_schedule("linear", 4000)  # scaled so that the process has the same total noise
    assert b4k[0].item() == pytest.approx(2.5e-5) and b4k[-1].item() == pytest.approx(0.005)


def test_cosine_schedule_follows_alpha_bar():
    d = _diffusion(schedule="cosine")
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ac = d.alphas_cumprod
    for i in (0, 10, 500, 990):
        assert ac[i].item() == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-9)
    assert d.betas.max().item() == pytest.approx(0.999)  # clipped near t = T


@pytest.mark.parametrize("name", ["quadratic", ""])
def test_unknown_schedule(name):
    with pytest.raises(ValueError, match="noise_schedule"):
        DiffusionSettings(noise_schedule=name)


def test_space_timesteps_forms():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "") == set(range(1000))
    assert space_timesteps(1000, 10) == space_timesteps(1000, "10")
    assert sorted(space_timesteps(1000, "10")) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    three = sorted(space_timesteps(300, "1,2,3"))
    assert three == [0, 100, 199, 200, 250, 299]
    assert len(space_timesteps(1000, "10,10,10")) == 30
    with pytest.raises(ValueError, match="cannot take 20 steps from a section of 10"):
        space_timesteps(10, "20")
    with pytest.raises(ValueError, match="no integer stride gives exactly 999"):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="expected a step count"):
        space_timesteps(1000, "fast")


def test_respacing_keeps_cumulative_alphas_at_kept_steps():
    base = _diffusion()
    for spec in ("25", "ddim10", "5,10,20"):
        r = base.respace(spec)
        kept = r.timestep_map
        assert torch.allclose(r.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
        assert r.num_timesteps == len(kept) and r.original_num_steps == 1000


def test_model_timesteps_map_and_rescale():
    r = _diffusion(respacing="ddim10")
    t = torch.tensor([0, 5, 9])
    assert r.model_timesteps(t).tolist() == [0, 500, 900]
    rr = _diffusion(steps=4000, respacing="4", rescale_timesteps=True)
    assert rr.model_timesteps(torch.tensor([0, 3])).tolist() == [0.0, 999.75]


# ---------------------------------------------------------- precision
def test_schedules_stay_float64_under_every_lightning_precision():
    from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision

    d = _diffusion()
    holder = torch.nn.Module()
    holder.unet = _tiny()
    holder.diffusion = d
    before = {k: d.table(k) for k in ("betas", "alphas_cumprod", "posterior_log_variance_clipped")}
    for plugin in (HalfPrecision("bf16-true"), HalfPrecision("16-true"), DoublePrecision()):
        plugin.convert_module(holder)
    holder.half()
    holder.to(torch.bfloat16)
    for k, v in before.items():
        assert d.table(k).dtype == torch.float64 and torch.equal(d.table(k), v), k
    # coefficients meet a bfloat16 batch in float32, so the x0 estimate is computed in float32
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    out = torch.randn(2, 6, 8, 8, dtype=torch.bfloat16)
    mv = d.mean_variance_from_output(out, x, torch.tensor([999, 1]))
    assert mv.pred_xstart.dtype == torch.float32 and mv.log_variance.dtype == torch.float32


# ---------------------------------------------------------------- q and p
def test_q_sample_has_the_marginal_moments():
    d = _diffusion(schedule="cosine")
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    t = torch.full((20000,), 300)
    xt = d.q_sample(x0, t)
    ac = d.alphas_cumprod[300].item()
    assert xt.mean().item() == pytest.approx(math.sqrt(ac) * 0.5, abs=0.02)
    assert xt.var().item() == pytest.approx(1 - ac, rel=0.03)
    mean, var, logvar = d.q_mean_variance(x0[:2], t[:2])
    assert torch.allclose(var, torch.full_like(var, 1 - ac)) and torch.allclose(logvar.exp(), var)


def test_posterior_is_the_gaussian_product():
    """q(x_{t-1}|x_t,x_0) from its definition: N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1-ab_{t-1})."""
    d = _diffusion(respacing="50")
    x0, xt = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    for i in (1, 20, 49):
        t = torch.tensor([i])
        beta = d.betas[i].item()
        ab_prev = d.alphas_cumprod[i - 1].item()
        prec = (1 - beta) / beta + 1 / (1 - ab_prev)
        mean = (math.sqrt(1 - beta) / beta * xt + math.sqrt(ab_prev) / (1 - ab_prev) * x0) / prec
        m, v, lv = d.q_posterior_mean_variance(x0, xt, t)
        assert torch.allclose(m, mean, atol=1e-5)
        assert v[0, 0, 0, 0].item() == pytest.approx(1 / prec, rel=1e-5)


def test_x0_eps_roundtrip():
    d = _diffusion()
    x, eps, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 800])
    x0 = d.predict_xstart_from_eps(x, t, eps)
    assert torch.allclose(d.predict_eps_from_xstart(x, t, x0), eps, atol=1e-4)


def test_variance_types():
    x, t = torch.randn(2, 3, 4, 4), torch.tensor([0, 500])
    learned = _diffusion("learned_range")
    eps = torch.randn(2, 3, 4, 4)
    lo = learned.mean_variance_from_output(torch.cat([eps, -torch.ones_like(eps)], 1), x, t)
    hi = learned.mean_variance_from_output(torch.cat([eps, torch.ones_like(eps)], 1), x, t)
    small = _diffusion("fixed_small").mean_variance_from_output(eps, x, t)
    large = _diffusion("fixed_large").mean_variance_from_output(eps, x, t)
    assert torch.allclose(lo.log_variance, small.log_variance)  # -1: posterior variance (log clipped at t = 0)
    assert torch.allclose(hi.log_variance[1], torch.log(learned.betas[500]).float().expand(3, 4, 4))  # +1: beta
    assert torch.allclose(large.variance[1], learned.betas[500].float().expand(3, 4, 4))
    # fixed large uses the posterior variance at t = 0
    assert torch.allclose(large.variance[0], learned.table("posterior_variance")[1].float().expand(3, 4, 4))
    with pytest.raises(ValueError, match="must output 6 channels"):
        learned.mean_variance_from_output(eps, x, t)


def test_clip_and_denoised_fn():
    d = _diffusion("fixed_large")
    x, t = torch.randn(1, 3, 4, 4) * 50, torch.tensor([999])
    eps = torch.zeros(1, 3, 4, 4)
    raw = d.mean_variance_from_output(eps, x, t, clip_denoised=False).pred_xstart
    assert raw.abs().max() > 1
    clipped = d.mean_variance_from_output(eps, x, t).pred_xstart
    assert torch.equal(clipped, raw.clamp(-1, 1))
    halved = d.mean_variance_from_output(eps, x, t, clip_denoised=False, denoised_fn=lambda z: z / 2).pred_xstart
    assert torch.allclose(halved, raw / 2)


def test_start_x_models_predict_x0_directly():
    d = _diffusion("fixed_small", predict_xstart=True)
    x0 = torch.rand(1, 3, 4, 4) * 2 - 1
    mv = d.mean_variance_from_output(x0, torch.randn(1, 3, 4, 4), torch.tensor([7]))
    assert torch.equal(mv.pred_xstart, x0)


# ----------------------------------------------------------------- steps
class _Oracle(torch.nn.Module):
    """Predicts the exact epsilon of a known x0 (and the lowest variance)."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.d, self.x0 = diffusion, x0

    def forward(self, x, timesteps):
        t = (self.d.timestep_map[None, :] == timesteps[:, None]).float().argmax(1)
        eps = self.d.predict_eps_from_xstart(x, t, self.x0)
        return torch.cat([eps, -torch.ones_like(eps)], 1)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_sampling_with_an_oracle_recovers_x0(method):
    d = _diffusion(respacing="20")
    x0 = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    out = d.sample(_Oracle(d, x0), (2, 3, 8, 8), method=method, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x0, atol=1e-3)


def test_ddim_eta_zero_is_deterministic_and_eta_adds_noise():
    d = _diffusion(respacing="10")
    model = _tiny()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([5, 5])
    with torch.no_grad():
        a = d.ddim_sample(model, x, t).sample
        b = d.ddim_sample(model, x, t).sample
        c = d.ddim_sample(model, x, t, eta=1.0, generator=torch.Generator().manual_seed(1)).sample
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="needs noise"):
        d.ddim_step(d.p_mean_variance(model, x, t), x, t, eta=0.5)


def test_ddim_with_eta_one_has_the_ddpm_posterior_variance():
    d = _diffusion("fixed_small", respacing="10")
    x, t = torch.randn(1, 3, 4, 4), torch.tensor([6])
    mv = d.mean_variance_from_output(torch.randn(1, 3, 4, 4), x, t)
    step = d.ddim_step(mv, x, t, noise=torch.zeros_like(x), eta=1.0)
    assert torch.allclose(step.log_variance, mv.log_variance, atol=1e-5)
    assert torch.allclose(step.mean, mv.mean, atol=1e-5)


def test_no_noise_at_the_last_step():
    d = _diffusion()
    mv = d.mean_variance_from_output(torch.randn(2, 6, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([0, 3]))
    out = d.ddpm_step(mv, torch.zeros(2, 3, 4, 4), torch.tensor([0, 3]), torch.ones(2, 3, 4, 4))
    assert torch.equal(out.sample[0], mv.mean[0]) and not torch.equal(out.sample[1], mv.mean[1])


def test_per_sample_generators_make_noise_independent_of_the_batch():
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13)]  # noqa: E731
    batch = randn((3, 3, 4, 4), gens())
    alone = randn((1, 3, 4, 4), [gens()[1]])
    assert torch.equal(batch[1], alone[0]) and not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="3 generators for a batch of 2"):
        randn((2, 3), gens())


# ------------------------------------------------------------------ loss
def test_hybrid_loss_terms():
    d = _diffusion()
    model = _tiny().train()
    x0 = torch.rand(3, 3, 32, 32) * 2 - 1
    t = torch.tensor([0, 400, 999])
    noise = torch.randn_like(x0)
    terms = d.training_losses(model, x0, t, noise=noise)
    assert set(terms) == {"loss", "mse", "vb"} and terms["loss"].shape == (3,)
    out = model(d.q_sample(x0, t, noise), t)
    assert torch.allclose(terms["mse"], ((noise - out[:, :3]) ** 2).mean((1, 2, 3)), atol=1e-6)
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    assert (terms["vb"] >= 0).all()

    # the bound term trains the variance output only
    model.zero_grad()
    terms["vb"].sum().backward()
    w = model.out[2].weight.grad
    assert w[:3].abs().sum() == 0 and w[3:].abs().sum() > 0


def test_vb_is_zero_for_the_true_posterior_and_rescaling():
    d = _diffusion("fixed_small")
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    t = torch.tensor([5, 600])
    xt = d.q_sample(x0, t)
    eps = d.predict_eps_from_xstart(xt, t, x0)
    mv = d.mean_variance_from_output(eps, xt, t, clip_denoised=False)
    assert torch.allclose(d.vb_terms_bpd(mv, x0, xt, t), torch.zeros(2), atol=1e-4)
    assert normal_kl(torch.tensor(0.0), 0.0, 1.0, 0.0).item() == pytest.approx(0.5)

    model = _tiny().train()
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    t, noise = torch.tensor([3, 500]), torch.randn(2, 3, 32, 32)
    plain = _diffusion(steps=4000).training_losses(model, x0, t, noise=noise)
    rescaled = _diffusion(steps=4000, rescale_learned_sigmas=True).training_losses(model, x0, t, noise=noise)
    assert torch.allclose(rescaled["vb"], plain["vb"] * 4)
    kl = _diffusion(steps=4000, use_kl=True).training_losses(model, x0, t, noise=noise)
    assert set(kl) == {"loss"} and torch.allclose(kl["loss"], plain["vb"] * 4000, rtol=1e-5)


# ------------------------------------------------- the t = 0 decoder term
def _exact_bin_mass(levels: torch.Tensor, mean: float, sigma: float) -> torch.Tensor:
    """N(mean, sigma^2) mass of each 8-bit bin: level k is x = k/127.5 - 1, its bin [x - 1/255, x + 1/255]; the
    bins of 0 and 255 open to -inf and +inf. Exact normal CDF (float64), independent of the project's code."""
    x = levels / 127.5 - 1
    inf = torch.tensor(math.inf, dtype=torch.float64)
    upper = torch.where(levels == 255, inf, x + 1 / 255)
    lower = torch.where(levels == 0, -inf, x - 1 / 255)
    return torch.special.ndtr((upper - mean) / sigma) - torch.special.ndtr((lower - mean) / sigma)


@pytest.mark.parametrize(
    "mean,sigma", [(0.0, 0.01), (0.3, 2 / 255), (-0.97, 0.05), (0.99, 0.004), (-1.0, 1 / 255), (1.0, 0.2), (0.5, 0.5)]
)
def test_decoder_likelihood_is_the_normal_mass_of_the_8bit_bin(mean, sigma):
    levels = torch.arange(256, dtype=torch.float64)
    x = (levels / 127.5 - 1).float()  # every 8-bit value, in [-1, 1]
    ll = discretized_gaussian_log_likelihood(
        x, means=torch.full_like(x, mean), log_scales=torch.full_like(x, math.log(sigma))
    )
    mass = ll.double().exp()
    # the reference's CDF (tanh approximation, kept for its numbers) is within 2e-4 of the normal CDF, so a bin
    # (a difference of two values) within 4e-4; a wrong bin width, scale or closed edge bin is off by far more
    assert (mass - _exact_bin_mass(levels, mean, sigma)).abs().max() < 4e-4
    # the bins tile the real line: their masses sum to 1 (exactly, for any CDF)
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_vb_at_t0_is_the_decoder_nll_in_bits():
    """Hand-computed: sigma = 1/255 is half a bin, so the bin of x under N(x, sigma^2) is mean +- 1 sigma.

    An inner value: Phi(1) - Phi(-1) = 0.682689 -> -log2 = 0.550699 bits; the edge value -1 (its bin open
    below): Phi(1) = 0.841345 -> 0.249231 bits; per-image mean 0.399965 bits per dimension.
    """
    d = _diffusion()
    x0 = torch.tensor([-1.0, 1 / 255]).reshape(1, 1, 1, 2)  # levels 0 and 128
    log_var = torch.full_like(x0, 2 * math.log(1 / 255))
    mv = MeanVariance(mean=x0.clone(), variance=log_var.exp(), log_variance=log_var, pred_xstart=x0.clone())
    xt = torch.randn_like(x0)
    vb = d.vb_terms_bpd(mv, x0, xt, torch.tensor([0]))
    assert vb.shape == (1,)
    # the tanh-approximated CDF is within 2e-4 of Phi: at most 7.6e-4 and 3.1e-4 bits on the two values, 5.4e-4 on
    # their mean (the code gives 0.40042)
    assert vb.item() == pytest.approx(0.399965, abs=1e-3)
    # t > 0 is the KL term instead, a different number for the same Gaussian
    assert abs(d.vb_terms_bpd(mv, x0, xt, torch.tensor([1])).item() - vb.item()) > 0.1


def test_from_prior_uses_the_released_settings():
    d = GaussianDiffusion.from_prior(get_preset("imagenet64_cond"), respacing="ddim25")
    assert d.model_var_type == "learned_range" and d.num_timesteps == 25
    assert torch.allclose(d.alphas_cumprod, _diffusion(schedule="cosine").alphas_cumprod[d.timestep_map])
