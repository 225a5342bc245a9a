"""Ground-truth reference fixtures from diffusers' OnnxStableDiffusionPipeline on the tiny export.

For every case below this writes tests/fixtures/reference/<case>/:
  latents.npy  final latents BEFORE the 1/0.18215 scaling, float32 [1, 4, H/8, W/8]
  image.png    RGB8, exactly what the pipeline returns ((clip(x/2+0.5, 0, 1) * 255).round())
  case.json    every parameter, the 77 token ids actually fed to the text encoder, the sha256 of
               the initial noise (float32 C-order bytes, before init_noise_sigma), the scheduler's
               timesteps and the timestep values/dtype fed to the UNet.

Run from the repository root (after scripts/make_tiny_model.py):

    /work/venv/ref/bin/python scripts/make_reference.py

ONNX Runtime runs on the CPU provider with one intra-op thread so that reruns write identical bytes.

The pipeline itself is used unchanged; four of its traps are worked around from outside:

(a) int64 input_ids. The pipeline always calls the text encoder with `ids.astype(np.int32)`, so an
    optimum export (int64 `input_ids`) fails with an ORT type error. The text encoder's
    OnnxRuntimeModel gets a subclass whose __call__ casts `input_ids` to the type the session
    declares (and records the ids it fed, which go into case.json).
(b) init_noise_sigma. The pipeline does `latents = latents * self.scheduler.init_noise_sigma`.
    PNDM/DDIM keep a Python float 1.0 there (fine), but Euler's is a 0-d float32 torch tensor and
    `ndarray * Tensor` raises TypeError (diffusers 0.42.1, torch 2.15); a float64 sigma
    (np.float64, or Tensor.item() wrapped by numpy) would instead promote the latents to float64
    under numpy 2. The semantics we want are those of diffusers' torch pipelines:
    float32 noise (numpy float64 randn cast to float32, as the pipeline does) times
    float32(init_noise_sigma), float32 throughout. Each scheduler class gets a subclass whose
    `init_noise_sigma` reads as np.float32, so the product stays a float32 ndarray.
(c) int64 timestep. The pipeline feeds `np.array([t], dtype=<declared timestep type>)`; with t a
    0-d torch int64 tensor this yields the right int64 [1] array, so it works as is. This script
    records the dtype and values actually fed and asserts they match the declared type. (Euler's
    timesteps are fractional float32: an int64-timestep export would truncate them, so the int64
    cases use PNDM and DDIM only.)
(d) Final latents are taken from the pipeline's own per-step callback (after the last step,
    before the 1/0.18215 scaling); the initial noise is taken from the RandomState the pipeline
    draws it from, by a subclass that records what randn returned.
"""
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    OnnxRuntimeModel,
    OnnxStableDiffusionPipeline,
    PNDMScheduler,
)
from transformers import CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "reference"
INTRA_OP_THREADS = 1

LONG_PROMPT = (
    "a highly detailed oil painting of an old lighthouse standing on a rocky cliff above a stormy sea at dusk, "
    "dramatic clouds, crashing waves, seagulls circling, warm light glowing from the lantern room, "
    "by a nineteenth century romantic landscape painter, museum quality, intricate brush strokes, "
    "rich colors, cinematic composition, volumetric fog, golden hour, trending on an art gallery website, "
    "with a small red fishing boat in the foreground and distant mountains fading into the mist"
)  # 92 tokens with BOS/EOS: the pipeline keeps BOS + 75 + EOS

# name -> parameters. Sizes are (height, width) in pixels.
CASES = [
    dict(name="pndm_64x64_s10_g7.5_neg", model="onnx/tiny-sd15", scheduler="pndm", prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=0, steps=10, guidance_scale=7.5, height=64, width=64),
    dict(name="pndm_64x64_s12_g7.5_noneg", model="onnx/tiny-sd15", scheduler="pndm",
         prompt="A red house by the lake, 4k!", negative_prompt=None, seed=1, steps=12, guidance_scale=7.5,
         height=64, width=64),
    dict(name="pndm_64x64_s8_g1_nocfg", model="onnx/tiny-sd15", scheduler="pndm", prompt="a photo of a cat",
         negative_prompt=None, seed=2, steps=8, guidance_scale=1.0, height=64, width=64),
    dict(name="ddim_64x64_s10_g7.5_neg", model="onnx/tiny-sd15", scheduler="ddim",
         prompt="an astronaut riding a horse on mars", negative_prompt="cartoon", seed=3, steps=10,
         guidance_scale=7.5, height=64, width=64),
    dict(name="ddim_64x64_s15_g5_noneg", model="onnx/tiny-sd15", scheduler="ddim",
         prompt="open neural network exchange", negative_prompt=None, seed=4, steps=15, guidance_scale=5.0,
         height=64, width=64),
    dict(name="euler_64x64_s10_g7.5_neg", model="onnx/tiny-sd15", scheduler="euler", prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=5, steps=10, guidance_scale=7.5, height=64, width=64),
    dict(name="euler_64x64_s20_g7.5_noneg", model="onnx/tiny-sd15", scheduler="euler",
         prompt="a bowl of fruit on a wooden table", negative_prompt=None, seed=6, steps=20, guidance_scale=7.5,
         height=64, width=64),
    dict(name="pndm_64x64_s6_g7.5_longprompt", model="onnx/tiny-sd15", scheduler="pndm", prompt=LONG_PROMPT,
         negative_prompt=None, seed=7, steps=6, guidance_scale=7.5, height=64, width=64),
    dict(name="pndm_h64_w96_s8_g7.5", model="onnx/tiny-sd15", scheduler="pndm", prompt="a wide mountain panorama",
         negative_prompt=None, seed=8, steps=8, guidance_scale=7.5, height=64, width=96),
    dict(name="ddim_h96_w64_s8_g7.5", model="onnx/tiny-sd15", scheduler="ddim", prompt="a tall portrait of a queen",
         negative_prompt="ugly", seed=9, steps=8, guidance_scale=7.5, height=96, width=64),
    dict(name="pndm_128x128_s4_g7.5", model="onnx/tiny-sd15", scheduler="pndm", prompt="a photo of a cat",
         negative_prompt=None, seed=10, steps=4, guidance_scale=7.5, height=128, width=128),
    # Same parameters as the int32 cases above: same weights, so identical results are expected.
    dict(name="int64_pndm_64x64_s10_g7.5_neg", model="onnx/tiny-sd15-int64", scheduler="pndm",
         prompt="a photo of a cat", negative_prompt="blurry, low quality", seed=0, steps=10, guidance_scale=7.5,
         height=64, width=64, same_as="pndm_64x64_s10_g7.5_neg"),
    dict(name="int64_ddim_64x64_s10_g7.5_neg", model="onnx/tiny-sd15-int64", scheduler="ddim",
         prompt="an astronaut riding a horse on mars", negative_prompt="cartoon", seed=3, steps=10,
         guidance_scale=7.5, height=64, width=64, same_as="ddim_64x64_s10_g7.5_neg"),
    # float16 I/O: latents, embeddings and the scheduler math run in float16 (the pipeline takes the
    # latent dtype from the text encoder's output), so compare with a loose tolerance only.
    dict(name="fp16io_pndm_64x64_s10_g7.5_neg", model="tests/fixtures/models/tiny-sd15-fp16io", scheduler="pndm",
         prompt="a photo of a cat", negative_prompt="blurry, low quality", seed=0, steps=10, guidance_scale=7.5,
         height=64, width=64, approximates="pndm_64x64_s10_g7.5_neg"),
    # Schedulers a user swaps in: `Cls.from_config(pipe.scheduler.config)` from the model's PNDM config
    # (so they inherit its timestep_spacing "leading"); `scheduler_config` holds extra from_config kwargs.
    dict(name="lms_64x64_s10_g7.5_neg", model="onnx/tiny-sd15", scheduler="lms", prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=11, steps=10, guidance_scale=7.5, height=64, width=64),
    dict(name="lms_64x64_s20_g7.5_noneg", model="onnx/tiny-sd15", scheduler="lms",
         prompt="a lighthouse on a cliff at dusk", negative_prompt=None, seed=12, steps=20, guidance_scale=7.5,
         height=64, width=64),
    dict(name="dpmpp-2m_64x64_s10_g7.5_neg", model="onnx/tiny-sd15", scheduler="dpmpp-2m",
         prompt="an astronaut riding a horse on mars", negative_prompt="cartoon", seed=13, steps=10,
         guidance_scale=7.5, height=64, width=64),
    dict(name="dpmpp-2m_64x64_s20_g5_noneg", model="onnx/tiny-sd15", scheduler="dpmpp-2m",
         prompt="a bowl of fruit on a wooden table", negative_prompt=None, seed=14, steps=20, guidance_scale=5.0,
         height=64, width=64),
    dict(name="dpmpp-2m-karras_64x64_s20_g7.5_neg", model="onnx/tiny-sd15", scheduler="dpmpp-2m",
         scheduler_config={"use_karras_sigmas": True}, prompt="a photo of a cat",
         negative_prompt="blurry, low quality", seed=15, steps=20, guidance_scale=7.5, height=64, width=64),
]

SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "dpmpp-2m": DPMSolverMultistepScheduler,
}


# Cases of these classes are configured from the loaded pipeline's scheduler config (see load());
# the original three keep from_config(file) so that their outputs stay byte-identical.
SWAPPED_IN = {"lms", "dpmpp-2m"}


def float32_init_sigma(cls):
    """Subclass of a scheduler whose init_noise_sigma reads as np.float32 (workaround (b))."""
    parent = cls.__dict__.get("init_noise_sigma") or getattr(cls, "init_noise_sigma", None)

    class Float32Sigma(cls):
        @property
        def init_noise_sigma(self):
            if not isinstance(parent, property):
                # PNDM/DDIM: a Python float 1.0, which numpy 2 multiplies without promotion (and
                # which keeps float16 latents float16 for fp16 exports)
                return self.__dict__["_init_noise_sigma"]
            return np.float32(float(parent.fget(self)))  # a float32 tensor: exact as np.float32

        @init_noise_sigma.setter
        def init_noise_sigma(self, v):  # PNDM/DDIM assign a plain attribute in __init__
            self.__dict__["_init_noise_sigma"] = v

    Float32Sigma.__name__ = cls.__name__
    return Float32Sigma


class RecordingTextEncoder(OnnxRuntimeModel):
    """Casts input_ids to the session's declared type (workaround (a)) and records what it fed."""

    def __call__(self, **kwargs):
        declared = {i.name: i.type for i in self.model.get_inputs()}["input_ids"]
        ids = np.asarray(kwargs["input_ids"]).astype({"tensor(int32)": np.int32, "tensor(int64)": np.int64}[declared])
        self.fed.append(ids.copy())
        return super().__call__(input_ids=ids)


class RecordingUnet(OnnxRuntimeModel):
    """Records the timestep arrays the pipeline feeds (for workaround (c) and case.json)."""

    def __call__(self, **kwargs):
        self.fed.append(np.asarray(kwargs["timestep"]).copy())
        return super().__call__(**kwargs)


class RecordingRandomState(np.random.RandomState):
    def randn(self, *shape):
        out = super().randn(*shape)
        self.drawn.append(out.copy())
        return out


def load(model_dir, scheduler, scheduler_config=None):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = INTRA_OP_THREADS

    def sess(comp, cls=OnnxRuntimeModel):
        # load from the file path so external weights (weights.pb / model.onnx_data) resolve
        # (OnnxRuntimeModel.load_model passes provider_options=[] beside one provider, which
        # ORT 1.31 rejects before silently retrying; build the session directly instead)
        m = cls(ort.InferenceSession(str(model_dir / comp / "model.onnx"), sess_options=opts,
                                     providers=["CPUExecutionProvider"]))
        m.fed = []
        return m

    sched_cls = float32_init_sigma(SCHEDULERS[scheduler])
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    if scheduler in SWAPPED_IN:
        # What a user does to swap schedulers: Cls.from_config(pipe.scheduler.config, **overrides),
        # pipe.scheduler being the PNDMScheduler the pipeline loads from the file. Keys the class
        # does not know are dropped; the rest (timestep_spacing "leading" included) carry over.
        config = PNDMScheduler.from_config(config).config
    pipe = OnnxStableDiffusionPipeline(
        vae_encoder=None,
        vae_decoder=sess("vae_decoder"),
        text_encoder=sess("text_encoder", RecordingTextEncoder),
        tokenizer=CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer")),
        unet=sess("unet", RecordingUnet),
        scheduler=sched_cls.from_config(config, **(scheduler_config or {})),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def run_case(case):
    model_dir = ROOT / case["model"]
    pipe = load(model_dir, case["scheduler"], case.get("scheduler_config"))
    gen = RecordingRandomState(case["seed"])
    gen.drawn = []
    steps_latents = []
    result = pipe(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        height=case["height"],
        width=case["width"],
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        eta=0.0,
        generator=gen,
        output_type="pil",
        callback=lambda i, t, lat: steps_latents.append(lat),
        callback_steps=1,
    )
    latents = steps_latents[-1]
    assert isinstance(latents, np.ndarray), type(latents)
    assert len(gen.drawn) == 1, "the pipeline should draw the initial noise once"
    # The reference noise is float32 (for fp16 models the pipeline casts it on to float16)
    noise = gen.drawn[0].astype(np.float32)
    assert noise.shape == (1, 4, case["height"] // 8, case["width"] // 8)
    image = result.images[0]
    assert image.mode == "RGB" and image.size == (case["width"], case["height"])

    te, unet = pipe.text_encoder, pipe.unet
    cfg = case["guidance_scale"] > 1.0
    assert len(te.fed) == (2 if cfg else 1)  # positive first, then the negative ("" when none)
    declared_ts = {i.name: i.type for i in unet.model.get_inputs()}["timestep"]
    fed_ts = unet.fed
    assert all(t.shape == (1,) for t in fed_ts)
    assert {str(t.dtype) for t in fed_ts} == {{"tensor(float)": "float32", "tensor(int64)": "int64",
                                                "tensor(float16)": "float16"}[declared_ts]}
    sched = pipe.scheduler
    timesteps = sched.timesteps
    untruncated = pipe.tokenizer(case["prompt"]).input_ids  # BOS ... EOS, no padding, no truncation

    d = OUT / case["name"]
    d.mkdir(parents=True)
    np.save(d / "latents.npy", latents.astype(np.float32))  # fp16 models: exact widening
    image.save(d / "image.png", optimize=False)
    meta = {
        "name": case["name"],
        "model": case["model"],
        "prompt": case["prompt"],
        "negative_prompt": case["negative_prompt"],
        "seed": case["seed"],
        "steps": case["steps"],
        "guidance_scale": case["guidance_scale"],
        "height": case["height"],
        "width": case["width"],
        "scheduler": case["scheduler"],
        "scheduler_class": SCHEDULERS[case["scheduler"]].__name__,
        "eta": 0.0 if case["scheduler"] == "ddim" else None,
        "noise": "numpy",
        "noise_note": "np.random.RandomState(seed).randn(1, 4, H/8, W/8) (float64) cast to float32",
        "init_noise_sha256": sha256(np.ascontiguousarray(noise).tobytes()),
        "init_noise_sigma": float(sched.init_noise_sigma),
        "cfg": cfg,
        "prompt_ids": te.fed[0][0].tolist(),
        "negative_prompt_ids": te.fed[1][0].tolist() if cfg else None,
        "negative_prompt_note": None if not cfg else ("empty string \"\"" if case["negative_prompt"] is None else None),
        "input_ids_dtype_fed": str(te.fed[0].dtype),
        "prompt_truncated": len(untruncated) > 77,
        "prompt_token_count_untruncated": len(untruncated),  # including BOS and EOS
        "timesteps": [float(t) if timesteps.is_floating_point() else int(t) for t in timesteps],
        "timesteps_dtype": str(timesteps.dtype).replace("torch.", ""),
        "unet_calls": len(fed_ts),
        "unet_timestep_dtype_fed": str(fed_ts[0].dtype),
        "unet_timesteps_fed": [t.item() for t in fed_ts],
        "latents_dtype_in_pipeline": str(latents.dtype),
        "latents_shape": list(latents.shape),
        "latents_sha256": sha256(np.ascontiguousarray(latents.astype(np.float32)).tobytes()),
        "image_rgb8_sha256": sha256(np.asarray(image).tobytes()),
        "image_conversion": "(clip(x/2+0.5, 0, 1) * 255).round() as uint8, NHWC RGB",
        "latent_scale": 0.18215,
        "generator": {
            "pipeline": "diffusers.OnnxStableDiffusionPipeline (workarounds: see scripts/make_reference.py)",
            "diffusers": diffusers.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "torch": torch.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_num_threads": INTRA_OP_THREADS,
        },
    }
    if case.get("scheduler_config"):
        meta["scheduler_config_overrides"] = case["scheduler_config"]
        meta.update(case["scheduler_config"])  # e.g. "use_karras_sigmas": true, read by the conformance test
    for k in ("same_as", "approximates"):
        if k in case:
            meta[k] = case[k]
    (d / "case.json").write_text(json.dumps(meta, indent=2) + "\n")
    return latents, np.asarray(image), meta


def main():
    # Only this script's cases are replaced: scripts/make_torch_reference.py writes others beside them.
    OUT.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        if (OUT / case["name"]).exists():
            shutil.rmtree(OUT / case["name"])
    results = {}
    for case in CASES:
        lat, img, meta = run_case(case)
        results[case["name"]] = (lat, img)
        u8 = img.astype(np.float64)
        print(f"{case['name']:34s} {case['model']:38s} {case['height']}x{case['width']} {case['scheduler']:5s} "
              f"steps {case['steps']:2d} g {case['guidance_scale']:3.1f} unet calls {meta['unet_calls']:2d} "
              f"ts {meta['timesteps_dtype']}/{meta['unet_timestep_dtype_fed']}  latents std {lat.std():6.3f} "
              f"image mean {u8.mean():5.1f} std {u8.std():4.1f} at 0/255 {(img == 0).mean():.1%}/{(img == 255).mean():.1%}")
        if "same_as" in case:
            lat0, img0 = results[case["same_as"]]
            print(f"    vs {case['same_as']}: latents identical {np.array_equal(lat, lat0)} "
                  f"(max|diff| {np.abs(lat - lat0).max():.2e}), image identical {np.array_equal(img, img0)}")
        if "approximates" in case:
            lat0, img0 = results[case["approximates"]]
            print(f"    vs {case['approximates']}: latents max|diff| {np.abs(lat.astype(np.float32) - lat0).max():.3e} "
                  f"(latents std {lat0.std():.3f}), image max|diff| {np.abs(img.astype(int) - img0).max()} levels, "
                  f"mean {np.abs(img.astype(int) - img0).mean():.2f}")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{len(CASES)} cases, {total:,} bytes in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
