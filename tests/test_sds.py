"""SDS gradient against its closed form, for fixed noise and timestep, on real (tiny) diffusers priors. The tests
that take ``device`` run on ``DREAM3D_TEST_DEVICE`` (tests/conftest.py)."""

from __future__ import annotations

import torch

from dream3d.config import GuidanceConfig
from dream3d.guidance.sds import SDSGuidance, predicted_noise
from dream3d.prior import PromptEmbeddings, load_prior


def closed_form(prior, z, t, noise, cond, uncond, scale):
    """w(t) (eps_uncond + s (eps_cond - eps_uncond) - eps), computed with two separate UNet calls."""
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
    with torch.no_grad():
        e_c = prior.unet(z_t, t, encoder_hidden_states=cond).sample
        e_u = prior.unet(z_t, t, encoder_hidden_states=uncond).sample
    return (1 - abar) * (e_u + scale * (e_c - e_u) - noise)


def test_pixel_sds_gradient_equals_closed_form(pixel_prior_dir, device):
    prior = load_prior(str(pixel_prior_dir), device, "fp32")
    size = prior.image_size
    rgb = torch.rand(2, size, size, 3).to(device).requires_grad_(True)
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["front", "back"])
    t = torch.tensor([100, 700], device=device)
    noise = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    guidance = SDSGuidance(GuidanceConfig(guidance_scale=7.5), prior)
    out = guidance(rgb, cond, uncond, t=t, noise=noise)
    out["sds"].backward()
    z = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    expected = closed_form(prior, z, t, noise, cond, uncond, 7.5) / 2  # L is averaged over the batch of 2
    got = rgb.grad.permute(0, 3, 1, 2) / 2  # d z / d rgb = 2
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_latent_sds_gradient_in_latent_space(latent_prior_dir, device):
    prior = load_prior(str(latent_prior_dir), device, "fp32")
    size = prior.image_size
    rgb = torch.rand(1, 48, 48, 3).to(device)  # not the prior's size: resized inside
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["side"])
    t = torch.tensor([500], device=device)
    h = size // prior.vae_scale_factor
    noise = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(2)).to(device)
    guidance = SDSGuidance(GuidanceConfig(guidance_scale=100.0), prior)
    latents = {}
    original = prior.encode_images

    def capture(x, generator=None):
        z = original(x, generator)
        z.retain_grad()
        latents["z"] = z
        return z

    prior.encode_images = capture
    try:
        out = guidance(rgb.requires_grad_(True), cond, uncond, t=t, noise=noise, generator=torch.Generator().manual_seed(3))
        out["sds"].backward()
    finally:
        prior.encode_images = original
    z = latents["z"]
    expected = closed_form(prior, z.detach(), t, noise, cond, uncond, 100.0)
    assert z.shape == (1, 4, h, h)
    assert torch.allclose(z.grad, expected, atol=1e-4, rtol=1e-4)
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0


def test_grad_clip_and_timestep_schedule(pixel_prior):
    cfg = GuidanceConfig(guidance_scale=100.0, grad_clip=0.01, t_min=0.02, t_max=[0, 0.98, 0.5, 100])
    guidance = SDSGuidance(cfg, pixel_prior)
    assert guidance.timestep_range(0) == (20, 980)
    assert guidance.timestep_range(100) == (20, 500)
    assert guidance.timestep_range(50) == (20, 740)
    size = pixel_prior.image_size
    rgb = torch.rand(1, size, size, 3, requires_grad=True)
    cond, uncond = PromptEmbeddings(pixel_prior, "a cube")(["front"])
    guidance(rgb, cond, uncond, generator=torch.Generator().manual_seed(0))["sds"].backward()
    assert rgb.grad.abs().max() <= 2 * 0.01 + 1e-7  # clipped in model space, times d z / d rgb = 2


def test_v_prediction_conversion(pixel_prior):
    """eps recovered from a v-prediction equals the noise that made z_t."""
    prior = pixel_prior
    z0 = torch.randn(2, 3, 8, 8)
    eps = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * z0
    old = prior.scheduler.config.prediction_type
    prior.scheduler.register_to_config(prediction_type="v_prediction")
    try:
        assert torch.allclose(predicted_noise(prior, z_t, t, v), eps, atol=1e-5)
    finally:
        prior.scheduler.register_to_config(prediction_type=old)


def test_image_space_sds_gradient_equals_closed_form(latent_prior_dir):
    """space=image: d L / d x = IMAGE_SCALE w(t) sqrt(abar / (1 - abar)) (x - D(z0_hat)) on the render resized to
    the prior's size, with z0_hat from the same CFG noise prediction as the latent variant; no encoder gradient."""
    import torch.nn.functional as F

    from dream3d.guidance.sds import IMAGE_SCALE

    prior = load_prior(str(latent_prior_dir))
    size = prior.image_size
    rgb = torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["front", "side"])
    t = torch.tensor([150, 600])
    h = size // prior.vae_scale_factor
    noise = torch.randn(2, 4, h, h, generator=torch.Generator().manual_seed(5))
    gen = lambda: torch.Generator().manual_seed(6)  # noqa: E731  the VAE's posterior sample
    out = SDSGuidance(GuidanceConfig(guidance_scale=20.0, space="image"), prior)(rgb, cond, uncond, t=t, noise=noise,
                                                                                   generator=gen())
    out["sds"].backward()
    with torch.no_grad():
        x = rgb.detach().permute(0, 3, 1, 2)
        z = prior.encode_images(x, gen())
        abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise
        eps_hat = closed_form(prior, z, t, noise, cond, uncond, 20.0) / (1 - abar) + noise
        x0 = prior.decode((z_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt())
        expected = IMAGE_SCALE * (1 - abar) * (abar / (1 - abar)).sqrt() * (x - x0) / 2  # L averaged over 2
    assert torch.allclose(rgb.grad.permute(0, 3, 1, 2), expected, atol=1e-4, rtol=1e-3)
    # a render at another size is resized (bilinear) before the comparison, and its gradient flows back through it
    small = F.interpolate(x, (size // 2, size // 2), mode="bilinear").permute(0, 2, 3, 1).clone().requires_grad_(True)
    SDSGuidance(GuidanceConfig(space="image"), prior)(small, cond, uncond, t=t, noise=noise)["sds"].backward()
    assert small.grad.shape == small.shape and torch.isfinite(small.grad).all() and small.grad.abs().sum() > 0


def test_image_space_sds_paints_the_prompt_on_the_shipped_prior():
    """2D SDS on a white 64x64 image with the shipped prior: in image space the object appears in the prompt's colour
    in the middle and the border stays white (the latent variant hatches the whole image: docs/quality.md)."""
    from dream3d.config import DEFAULT_PRIOR, PROJECT_ROOT

    prior = load_prior(str(PROJECT_ROOT / DEFAULT_PRIOR))
    cond, uncond = PromptEmbeddings(prior, "a red cube")(["front"])
    guidance = SDSGuidance(GuidanceConfig(guidance_scale=20.0, space="image", t_min=0.02, t_max=[0, 0.98, 0.5, 150]),
                           prior)
    logits = torch.full((1, 64, 64, 3), 3.0, requires_grad=True)  # white
    opt = torch.optim.Adam([logits], lr=0.03)
    gen = torch.Generator().manual_seed(0)
    for step in range(150):
        loss = guidance(torch.sigmoid(logits), cond, uncond, step, gen)["sds"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    img = torch.sigmoid(logits.detach())[0]
    centre, border = img[20:44, 20:44].reshape(-1, 3).mean(0), torch.cat([img[:6].reshape(-1, 3), img[-6:].reshape(-1, 3)]).mean(0)
    assert centre[0] > 0.5 and centre[0] > centre[1] + 0.25 and centre[0] > centre[2] + 0.25, centre  # red
    assert border.min() > 0.8, border  # background still white
