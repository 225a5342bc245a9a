"""Reference cases from diffusers' TORCH StableDiffusionPipeline, for noise the ONNX pipeline cannot use.

diffusers' OnnxStableDiffusionPipeline draws its initial latents from numpy and (for ancestral
samplers) its per-step noise from torch's global RNG, so a seeded torch-generator run, and any
euler-a run, can only be referenced through the torch pipeline. This script rebuilds the tiny
torch modules that onnx/tiny-sd15 was exported from (scripts/make_tiny_model.py's seeded builder
and calibration, same order, so bit-identical weights), checks them against the ONNX export, and
runs StableDiffusionPipeline with `generator=torch.Generator("cpu").manual_seed(seed)`.

It writes tests/fixtures/reference/<case>/ with the schema of scripts/make_reference.py
(latents.npy, image.png, case.json) plus `"pipeline": "torch"`; `model` names the ONNX folder the
Rust pipeline runs. Run from the repository root after scripts/make_tiny_model.py:

    /work/venv/ref/bin/python scripts/make_torch_reference.py

Faithfulness choices:
  * tokenizer: CLIPTokenizer from onnx/tiny-sd15/tokenizer (the files the ONNX model ships).
  * scheduler: `Cls.from_config(pipe.scheduler.config)`, pipe.scheduler being the PNDMScheduler
    loaded from onnx/tiny-sd15/scheduler/scheduler_config.json, as a user swaps schedulers.
  * latents before the VAE: taken with `callback_on_step_end` after the last step, so the
    pipeline still decodes and post-processes (VaeImageProcessor, `(x/2+0.5).clamp(0,1)`, then
    `(x*255).round()` to uint8) exactly as it does for users; output_type="latent" plus our own
    decode would be a re-implementation of that tail.
  * initial noise: recorded by wrapping the pipeline module's `randn_tensor` (what it really drew).
  * ids and timesteps fed: recorded by forward pre-hooks on the text encoder and UNet.
torch runs single-threaded with deterministic algorithms, so reruns write identical bytes.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_reference  # noqa: E402  (shared case.json helpers and output folder)
import make_tiny_model  # noqa: E402  (the seeded builder the ONNX export came from)

import diffusers  # noqa: E402
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion as sd_module  # noqa: E402
from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

ROOT = make_reference.ROOT
OUT = make_reference.OUT
MODEL = "onnx/tiny-sd15"

SCHEDULERS = {"pndm": PNDMScheduler, "euler-a": EulerAncestralDiscreteScheduler}

CASES = [
    dict(name="torch_euler-a_64x64_s10_g7.5_neg", scheduler="euler-a", prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=21, steps=10, guidance_scale=7.5, height=64, width=64),
    dict(name="torch_euler-a_64x64_s20_g7.5_noneg", scheduler="euler-a", prompt="a red house by the lake, 4k!",
         negative_prompt=None, seed=22, steps=20, guidance_scale=7.5, height=64, width=64),
    dict(name="torch_pndm_64x64_s10_g7.5_neg", scheduler="pndm", prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=0, steps=10, guidance_scale=7.5, height=64, width=64),
]


def build_modules(tok):
    """make_tiny_model.main()'s build + calibrate, in its order and thread settings."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    text, unet, vae = make_tiny_model.build_models()
    make_tiny_model.calibrate(text, unet, vae, tok)
    return text, unet, vae


@torch.no_grad()
def check_against_onnx(text, unet, vae, tok):
    """The rebuilt modules must be the exported ones: compare each with its ONNX graph."""
    model_dir = ROOT / MODEL
    rng = np.random.RandomState(0)
    ids = make_tiny_model.tokenize(tok, "a red house by the lake")
    x = rng.randn(2, 4, 8, 8).astype(np.float32)
    ehs = rng.randn(2, 77, make_tiny_model.TEXT_HIDDEN).astype(np.float32)
    lat = rng.randn(1, 4, 8, 8).astype(np.float32)

    def run(comp, feeds):
        s = ort.InferenceSession(str(model_dir / comp / "model.onnx"), providers=["CPUExecutionProvider"])
        return s.run(None, feeds)[0]

    pairs = {
        "text_encoder": (run("text_encoder", {"input_ids": ids.numpy().astype(np.int32)}),
                         text(ids).last_hidden_state.numpy()),
        "unet": (run("unet", {"sample": x, "timestep": np.array([801.0], np.float32), "encoder_hidden_states": ehs}),
                 unet(torch.from_numpy(x), torch.tensor([801.0]), torch.from_numpy(ehs)).sample.numpy()),
        "vae_decoder": (run("vae_decoder", {"latent_sample": lat}), vae.decode(torch.from_numpy(lat)).sample.numpy()),
    }
    agreement = {}
    for comp, (o, t) in pairs.items():
        rel = float(np.abs(o - t).max() / np.abs(t).max())
        agreement[comp] = rel
        print(f"  torch vs ONNX {comp}: max|diff|/max|torch| {rel:.2e}")
        assert rel < 1e-4, f"{comp}: rebuilt torch module does not match {MODEL} ({rel:.2e})"
    return agreement


def load_pipeline(text, unet, vae, tok, scheduler):
    config = json.loads((ROOT / MODEL / "scheduler" / "scheduler_config.json").read_text())
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=PNDMScheduler.from_config(config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = SCHEDULERS[scheduler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_case(case, modules, tok, agreement):
    text, unet, vae = modules
    pipe = load_pipeline(text, unet, vae, tok, case["scheduler"])
    fed_ids, fed_ts, drawn, step_latents = [], [], [], []
    hooks = [
        text.register_forward_pre_hook(lambda m, args: fed_ids.append(args[0].clone())),
        unet.register_forward_pre_hook(lambda m, args: fed_ts.append(args[1].clone())),
    ]
    original_randn = sd_module.randn_tensor

    def recording_randn(*args, **kwargs):
        out = original_randn(*args, **kwargs)
        drawn.append(out.clone())
        return out

    sd_module.randn_tensor = recording_randn
    try:
        def on_step_end(p, i, t, kwargs):
            step_latents.append(kwargs["latents"].clone())
            return kwargs

        result = pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"], height=case["height"],
                      width=case["width"], num_inference_steps=case["steps"], guidance_scale=case["guidance_scale"],
                      generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="pil",
                      callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        sd_module.randn_tensor = original_randn
        for h in hooks:
            h.remove()

    latents = step_latents[-1].numpy()
    assert latents.dtype == np.float32
    assert len(drawn) == 1, "the pipeline should draw the initial noise once"
    noise = drawn[0].numpy()
    assert noise.shape == (1, 4, case["height"] // 8, case["width"] // 8) and noise.dtype == np.float32
    image = result.images[0]
    assert image.mode == "RGB" and image.size == (case["width"], case["height"])
    cfg = case["guidance_scale"] > 1.0
    assert len(fed_ids) == (2 if cfg else 1)
    sched = pipe.scheduler
    timesteps = sched.timesteps
    untruncated = tok(case["prompt"]).input_ids

    d = OUT / case["name"]
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    np.save(d / "latents.npy", latents)
    image.save(d / "image.png", optimize=False)
    sha256 = make_reference.sha256
    meta = {
        "name": case["name"],
        "model": MODEL,
        "prompt": case["prompt"],
        "negative_prompt": case["negative_prompt"],
        "seed": case["seed"],
        "steps": case["steps"],
        "guidance_scale": case["guidance_scale"],
        "height": case["height"],
        "width": case["width"],
        "scheduler": case["scheduler"],
        "scheduler_class": SCHEDULERS[case["scheduler"]].__name__,
        "eta": None,
        "noise": "torch-cpu",
        "noise_note": "torch.randn(1, 4, H/8, W/8, generator=torch.Generator('cpu').manual_seed(seed)) float32"
                      + ("; euler-a then draws randn(latents.shape) from the same generator at every step"
                         if case["scheduler"] == "euler-a" else ""),
        "init_noise_sha256": sha256(np.ascontiguousarray(noise).tobytes()),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "cfg": cfg,
        "prompt_ids": fed_ids[0][0].tolist(),
        "negative_prompt_ids": fed_ids[1][0].tolist() if cfg else None,
        "negative_prompt_note": None if not cfg else ("empty string \"\"" if case["negative_prompt"] is None else None),
        "input_ids_dtype_fed": str(fed_ids[0].dtype).replace("torch.", ""),
        "prompt_truncated": len(untruncated) > 77,
        "prompt_token_count_untruncated": len(untruncated),
        "timesteps": [float(t) if timesteps.is_floating_point() else int(t) for t in timesteps],
        "timesteps_dtype": str(timesteps.dtype).replace("torch.", ""),
        "unet_calls": len(fed_ts),
        "unet_timestep_dtype_fed": str(fed_ts[0].dtype).replace("torch.", ""),
        "unet_timesteps_fed": [t.item() for t in fed_ts],
        "latents_dtype_in_pipeline": str(latents.dtype),
        "latents_shape": list(latents.shape),
        "latents_sha256": sha256(np.ascontiguousarray(latents).tobytes()),
        "image_rgb8_sha256": sha256(np.asarray(image).tobytes()),
        "image_conversion": "VaeImageProcessor: (x/2+0.5).clamp(0, 1), then (x * 255).round() as uint8, NHWC RGB",
        "latent_scale": 0.18215,
        "pipeline": "torch",
        "generator": {
            "pipeline": "diffusers.StableDiffusionPipeline from scripts/make_tiny_model.py's torch modules "
                        "(see scripts/make_torch_reference.py)",
            "latents_capture": "callback_on_step_end after the last step",
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__,
            "onnxruntime_checked_against": ort.__version__,
            "torch_vs_onnx_max_rel_diff": agreement,
        },
    }
    (d / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    return latents, np.asarray(image), meta


def main():
    tok = CLIPTokenizer.from_pretrained(str(ROOT / MODEL / "tokenizer"))
    modules = build_modules(tok)
    for m in modules:
        m.eval()
    agreement = check_against_onnx(*modules, tok)
    for case in CASES:
        lat, img, meta = run_case(case, modules, tok, agreement)
        print(f"{case['name']:36s} {case['scheduler']:7s} steps {case['steps']:2d} unet calls {meta['unet_calls']:2d} "
              f"ts {meta['timesteps_dtype']}/{meta['unet_timestep_dtype_fed']} latents std {lat.std():6.3f} "
              f"image mean {img.astype(np.float64).mean():5.1f}")


if __name__ == "__main__":
    main()
