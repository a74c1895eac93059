"""diffusion_core: the framework-neutral NumPy (float64) math of a DDPM.

**Index convention** (stated once, used everywhere): array index t = 0..T-1 stands for the
paper's step t+1. So `betas[0]` is β₁, `alphas_cumprod[0] = 1 - betas[0]` is ᾱ₁,
`alphas_cumprod_prev[0] = 1` is ᾱ₀, and index T-1 is the last (noisiest) step.

Tables (β, ᾱ, β̃, ...) are read-only float64 arrays computed once by `DiffusionSchedule`; see
`diffusion_core.schedule` for the glossary. Functions that transform data (`x0`, `x_t`, noise,
model outputs) accept any floating dtype, compute in float64 and return the inputs' dtype;
schedule quantities are float64. Step indices `t` are integer arrays aligned to the leading
(batch) axes of the data: t of shape (B,) with x of shape (B, ...), or a scalar. The core never
draws random numbers: noise is always an argument. Invalid input raises ValueError naming the
problem; no public function returns NaN for valid input.

Modules: `betas` (β schedules), `schedule` (DiffusionSchedule), `forward` (q(x_t|x0)),
`posterior` (q(x_{t-1}|x_t,x0)), `parameterization` (x0 ↔ ε ↔ v), `objectives` (training
targets), `respacing` (step subsequences), `reverse` (DDPM/DDIM steps), `multistep` (DPM-Solver++
2M/3M and SDE-2M tables in the same step form), `weighting` (uniform, min-SNR-γ and truncated-SNR
loss weights), `editing` (DDIM inversion, slerp, the forward jump q(x_t|x_s)), `distillation`
(progressive distillation's DDIM jumps, targets and step lists), `consistency` (consistency
models: the parameterisation, ECT's training pairs and weights, multistep consistency
sampling), `likelihood` (the variational bound). Importing this package does not import torch.
"""

from diffusion_core.betas import (
    BetaScheduleName,
    betas_from_alpha_bar,
    cosine_betas,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    sigmoid_betas,
    validate_betas,
)
from diffusion_core.consistency import (
    T_MIN,
    consistency_coefficients,
    consistency_function,
    consistency_scalings,
    consistency_timesteps,
    consistency_weights,
    ect_pair_timesteps,
    edm_noise_levels,
    lognormal_timestep_table,
    pseudo_huber,
    pseudo_huber_scale,
    scalings_at_angles,
    vp_angles,
)
from diffusion_core.distillation import (
    DistillationTables,
    ddim_jump,
    ddim_jump_coefficients,
    distillation_tables,
    distillation_timesteps,
    distillation_x0_target,
)
from diffusion_core.editing import ddim_inversion_coefficients, q_jump_mean_variance, slerp
from diffusion_core.forward import GaussianMoments, q_mean_variance, q_sample
from diffusion_core.likelihood import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    nats_to_bits_per_dim,
    normal_kl,
    prior_kl,
    vb_term,
)
from diffusion_core.multistep import MultistepTables, dpmpp_coefficients, dpmpp_tables, path_coefficients
from diffusion_core.objectives import Objective, ObjectiveTables, objective_tables
from diffusion_core.parameterization import (
    predict_eps_from_v,
    predict_eps_from_x0,
    predict_x0_from_eps,
    predict_x0_from_v,
    v_target,
)
from diffusion_core.posterior import q_posterior_mean_variance
from diffusion_core.respacing import (
    Spacing,
    log_snr_timesteps,
    respace,
    respaced_alphas,
    respaced_betas,
    select_timesteps,
)
from diffusion_core.reverse import (
    ReverseCoefficients,
    ReverseStep,
    Variance,
    ddim_coefficients,
    ddpm_coefficients,
    reverse_step,
)
from diffusion_core.schedule import DiffusionSchedule
from diffusion_core.weighting import DEFAULT_MIN_SNR_GAMMA, LossWeighting, loss_weights

__all__ = [
    "T_MIN",
    "consistency_coefficients",
    "consistency_function",
    "consistency_scalings",
    "consistency_timesteps",
    "consistency_weights",
    "ect_pair_timesteps",
    "edm_noise_levels",
    "lognormal_timestep_table",
    "pseudo_huber",
    "pseudo_huber_scale",
    "scalings_at_angles",
    "vp_angles",
    "DEFAULT_MIN_SNR_GAMMA",
    "LossWeighting",
    "loss_weights",
    "DistillationTables",
    "ddim_jump",
    "ddim_jump_coefficients",
    "distillation_tables",
    "distillation_timesteps",
    "distillation_x0_target",
    "BetaScheduleName",
    "DiffusionSchedule",
    "GaussianMoments",
    "MultistepTables",
    "Objective",
    "ObjectiveTables",
    "ReverseCoefficients",
    "ReverseStep",
    "Spacing",
    "Variance",
    "approx_standard_normal_cdf",
    "betas_from_alpha_bar",
    "cosine_betas",
    "ddim_coefficients",
    "ddim_inversion_coefficients",
    "ddpm_coefficients",
    "discretized_gaussian_log_likelihood",
    "dpmpp_coefficients",
    "dpmpp_tables",
    "linear_betas",
    "log_snr_timesteps",
    "make_betas",
    "nats_to_bits_per_dim",
    "normal_kl",
    "objective_tables",
    "path_coefficients",
    "predict_eps_from_v",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "predict_x0_from_v",
    "prior_kl",
    "q_jump_mean_variance",
    "q_mean_variance",
    "q_posterior_mean_variance",
    "q_sample",
    "rescale_zero_terminal_snr",
    "respace",
    "respaced_alphas",
    "respaced_betas",
    "reverse_step",
    "select_timesteps",
    "sigmoid_betas",
    "slerp",
    "v_target",
    "validate_betas",
    "vb_term",
]
