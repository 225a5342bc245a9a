#!/usr/bin/env python3
"""Write scheduler conformance fixtures from diffusers itself.

Run from the repository root with the reference venv:

    /work/venv/ref/bin/python scripts/make_scheduler_fixtures.py

For each (scheduler, config, steps) case it builds the diffusers scheduler with `from_config`,
draws a seeded float32 sample, multiplies it by `init_noise_sigma`, and runs the pipeline loop
with a fake UNet (a smooth float32 function of the scaled input and the timestep) plus
classifier-free guidance. Every call stores the timestep, the scaled batch-2 UNet input, the
guided batch-1 model output and the latents after `step` (and, for euler-a, the noise the step
draws from the same generator). The scaled input is stored for one CFG half (the two halves are
asserted identical). The Rust tests feed the stored model outputs back, so they check the
scheduler alone. Output is deterministic: rerunning rewrites identical files.

Schedulers: pndm, ddim, euler, euler-a, lms, dpmpp-2m; the 50-step case only for the first three
(keeps all fixtures under 1 MB). Karras-sigma cases (10 and 25 steps) for euler, lms and dpmpp-2m,
the classes with `use_karras_sigmas` in diffusers 0.42.1 (EulerAncestral has no such option). The SD1.5 config has no `timestep_spacing`, so each diffusers
class applies its own default (leading for PNDM/DDIM, linspace for the others).

Floats are written with Python's repr of the exact float32 value, so they round-trip bit-exact.
Output: tests/fixtures/schedulers/<case>.json and alphas_cumprod.json.
"""

import json
import math
import os

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

OUT = os.path.join("tests", "fixtures", "schedulers")

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, verbatim (incl. metadata keys).
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

CLASSES = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
}

# (name suffix, config overrides, steps)
VARIANTS = [
    ("sd15-20", {}, 20),
    ("sd15-1", {}, 1),
    ("sd15-4", {}, 4),
    ("sd15-50", {}, 50),
    ("leading-10", {"timestep_spacing": "leading"}, 10),
    ("linspace-10", {"timestep_spacing": "linspace"}, 10),
    ("trailing-10", {"timestep_spacing": "trailing"}, 10),
    ("trailing-7", {"timestep_spacing": "trailing"}, 7),
    ("alpha-one-10", {"set_alpha_to_one": True}, 10),
    ("offset0-10", {"steps_offset": 0}, 10),
    ("vpred-10", {"prediction_type": "v_prediction"}, 10),
    ("linear-10", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 10),
]

# Karras sigmas (`use_karras_sigmas`), for the classes that offer it. Kept apart from VARIANTS
# with their own seeds so that adding them left every earlier fixture byte-identical.
KARRAS_KINDS = ("euler", "lms", "dpmpp-2m")
KARRAS_VARIANTS = [
    ("karras-10", {"use_karras_sigmas": True}, 10),
    ("karras-25", {"use_karras_sigmas": True}, 25),
]
KARRAS_FIRST_SEED = 1000

LATENT_SHAPE = (1, 4, 2, 2)
# Only these get the 50-step case (size budget: all fixtures < 1 MB).
LONG_RUNS = {"pndm", "ddim", "euler"}


def flat(t):
    return [float(v) for v in t.detach().to(torch.float32).flatten().tolist()]


def fake_unet(x, t, eps):
    """Deterministic smooth float32 stand-in for the UNet: 0.3*x + 0.7*cos(t/300)*eps."""
    c = math.cos(float(t) / 300.0)
    return 0.3 * x + (0.7 * c) * eps


def run_case(kind, suffix, overrides, steps, seed):
    config = dict(SD15, **overrides)
    sched = CLASSES[kind].from_config(config)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    init = torch.randn(LATENT_SHAPE, generator=gen, dtype=torch.float32)
    eps = torch.randn((2,) + LATENT_SHAPE[1:], generator=torch.Generator().manual_seed(seed + 1))
    latents = init * sched.init_noise_sigma
    calls = []
    for t in sched.timesteps:
        x = torch.cat([latents] * 2)
        x = sched.scale_model_input(x, t)
        u = fake_unet(x, t, eps)
        mo = u[:1] + 7.5 * (u[1:] - u[:1])
        # Both CFG halves are scaled identically; store one to keep the fixtures small.
        assert torch.equal(x[0], x[1])
        call = {"scaled_input": flat(x[:1]), "model_output": flat(mo)}
        if kind == "euler-a":
            # Ancestral noise is drawn from the same generator, after the initial latents.
            state = gen.get_state()
            noise = torch.randn(LATENT_SHAPE, generator=gen, dtype=torch.float32)
            gen.set_state(state)
            call["noise"] = flat(noise)
            latents = sched.step(mo, t, latents, generator=gen).prev_sample
        else:
            latents = sched.step(mo, t, latents).prev_sample
        call["latents"] = flat(latents)
        calls.append(call)
    ins = sched.init_noise_sigma
    case = {
        "scheduler": kind,
        "case": suffix,
        "config": config,
        "steps": steps,
        "seed": seed,
        "shape": list(LATENT_SHAPE),
        "init_noise_sigma": float(torch.as_tensor(ins, dtype=torch.float32)),
        "timesteps": [float(v) for v in sched.timesteps.tolist()],
        "timestep_dtype": str(sched.timesteps.dtype),
        "initial_noise": flat(init),
        "calls": calls,
    }
    name = f"{kind}-{suffix}.json"
    with open(os.path.join(OUT, name), "w") as f:
        json.dump(case, f, separators=(",", ":"))
    return name


def alphas_cumprod_tables():
    tables = {}
    for name, cfg in [
        ("scaled_linear", SD15),
        ("linear", dict(SD15, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)),
    ]:
        s = DDIMScheduler.from_config(cfg)
        tables[name] = {"config": cfg, "betas": flat(s.betas), "alphas_cumprod": flat(s.alphas_cumprod)}
    with open(os.path.join(OUT, "alphas_cumprod.json"), "w") as f:
        json.dump(tables, f, separators=(",", ":"))


def main():
    os.makedirs(OUT, exist_ok=True)
    alphas_cumprod_tables()
    seed = 0
    for kind in CLASSES:
        for suffix, overrides, steps in VARIANTS:
            seed += 2
            if steps == 50 and kind not in LONG_RUNS:
                continue
            print(run_case(kind, suffix, overrides, steps, seed))
    seed = KARRAS_FIRST_SEED
    for kind in KARRAS_KINDS:
        for suffix, overrides, steps in KARRAS_VARIANTS:
            seed += 2
            print(run_case(kind, suffix, overrides, steps, seed))


if __name__ == "__main__":
    main()
