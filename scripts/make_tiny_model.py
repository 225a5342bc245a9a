"""Build a tiny, randomly initialised SD1.5-architecture model and export it to ONNX.

The monitor's tests need real SD1.5 ONNX folders (every block kind, the real 49408-id CLIP
vocabulary, the exporters' differing I/O signatures) but cannot ship or download 4 GB of weights.
This script builds the same architecture with tiny widths and seeded random weights, re-scaled so
that generation is not degenerate, and writes:

  onnx/tiny-sd15/                        diffusers convert-script layout: input_ids int32,
                                         timestep float32 [batch], UNet weights in unet/weights.pb,
                                         tokenizer without tokenizer.json
  onnx/tiny-sd15-int64/                  optimum layout: input_ids int64, timestep int64 [batch],
                                         UNet weights in unet/model.onnx_data, tokenizer.json
  tests/fixtures/models/tiny-sd15-fp16io/  same fp32 weights, every float input/output float16
  tests/fixtures/models/unet-scalar-timestep/unet/model.onnx
                                         UNet only, timestep a float32 scalar (optimum >= 1.24)

All variants share bit-identical weights. Run from the repository root:

    /work/venv/ref/bin/python scripts/make_tiny_model.py

It is deterministic: a rerun rewrites the same bytes.
"""
import hashlib
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_tokenizer_files import write_clip_tokenizer  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OPSET = 17
SEED = 1234

TEXT_HIDDEN = 8  # the 49408-row embedding table dominates the size: 49408*8*4 B = 1.6 MB per copy
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": diffusers.__version__,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "clip_sample": False,
    "trained_betas": None,
}


def build_models():
    torch.manual_seed(SEED)
    text_config = CLIPTextConfig(
        vocab_size=49408,
        max_position_embeddings=77,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_act="quick_gelu",  # SD1.5's text encoder (CLIP ViT-L/14) uses quick_gelu
        projection_dim=TEXT_HIDDEN,
        bos_token_id=49406,
        eos_token_id=49407,  # not 2: transformers' pooler takes the legacy argmax path for 2
        pad_token_id=49407,
    )
    text_config._attn_implementation = "eager"  # plain matmuls trace cleanly with the legacy exporter
    text = CLIPTextModel(text_config).eval()

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=2,  # diffusers' legacy name: this is the number of heads, as in SD1.5's 8
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
    ).eval()

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,  # 4 blocks -> 3 upsamplings -> pixels = 8x latents
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    ).eval()
    for m in (text, unet, vae):
        reinit(m)
    return text, unet, vae


def reinit(model):
    """Seeded variance-preserving init: default inits plus zeroed/ tiny layers give flat outputs."""
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            fan_in = mod.weight[0].numel()
            nn.init.normal_(mod.weight, 0.0, 1.0 / fan_in**0.5)
            if mod.bias is not None:
                nn.init.normal_(mod.bias, 0.0, 0.1)
        elif isinstance(mod, nn.Embedding):
            nn.init.normal_(mod.weight, 0.0, 1.0)
        elif isinstance(mod, (nn.GroupNorm, nn.LayerNorm)) and mod.weight is not None:
            nn.init.normal_(mod.weight, 1.0, 0.1)
            nn.init.normal_(mod.bias, 0.0, 0.1)


def rescale_out(conv, target_std, out, target_mean=0.0):
    """Rescale a final conv so its output over `out` has the wanted per-tensor std and mean."""
    with torch.no_grad():
        s = target_std / out.std().item()
        conv.weight.mul_(s)
        conv.bias.mul_(s)
        conv.bias.add_(target_mean - out.mean().item() * s)


def tokenize(tok, text):
    return torch.tensor(
        tok(text, padding="max_length", max_length=77, truncation=True).input_ids, dtype=torch.int64
    )[None]


@torch.no_grad()
def calibrate(text, unet, vae, tok):
    """Scale UNet and VAE output convs to useful ranges, measured on a real mini generation."""
    g = torch.Generator().manual_seed(SEED)
    cond = text(tokenize(tok, "a photo of a cat")).last_hidden_state
    x = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([1.0, 250.0, 500.0, 999.0])
    rescale_out(unet.conv_out, 1.0, unet(x, t, cond.expand(4, -1, -1)).sample)

    lat = simulate(unet, text, tok, steps=10, guidance=7.5, seed=SEED)
    rescale_out(vae.decoder.conv_out, 0.45, vae.decode(lat / 0.18215).sample)


@torch.no_grad()
def simulate(unet, text, tok, steps, guidance, seed, hw=(8, 8)):
    # from_config, as pipelines load it: PNDM ignores fields it does not know (clip_sample)
    sched = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    sched.set_timesteps(steps)
    emb = torch.cat([text(tokenize(tok, "")).last_hidden_state, text(tokenize(tok, "a photo of a cat")).last_hidden_state])
    lat = torch.randn(1, 4, *hw, generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = unet(torch.cat([lat] * 2), t, emb).sample
        u, c = eps.chunk(2)
        lat = sched.step(u + guidance * (c - u), t, lat).prev_sample
    return lat


# --- export wrappers: each fixes the I/O dtypes of one exporter flavour ------------------------

class TextEncoder(nn.Module):
    def __init__(self, text, ids_dtype, out_dtype):
        super().__init__()
        self.text, self.out_dtype = text, out_dtype

    def forward(self, input_ids):
        out = self.text(input_ids.long())
        return out.last_hidden_state.to(self.out_dtype), out.pooler_output.to(self.out_dtype)


class Unet(nn.Module):
    def __init__(self, unet, io_dtype):
        super().__init__()
        self.unet, self.io_dtype = unet, io_dtype

    def forward(self, sample, timestep, encoder_hidden_states):
        out = self.unet(sample.float(), timestep.float(), encoder_hidden_states.float()).sample
        return out.to(self.io_dtype)


class VaeDecoder(nn.Module):
    def __init__(self, vae, io_dtype):
        super().__init__()
        self.vae, self.io_dtype = vae, io_dtype

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample.float()).sample.to(self.io_dtype)


def export(module, args, input_names, output_names, dynamic_axes):
    f = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(module, args, f, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    kinds = sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0][:110]}" for w in caught})
    for k in kinds:
        print("    export warning:", k)
    model = onnx.load_from_string(f.getvalue())
    onnx.checker.check_model(model)
    return model


def save(model, path, external=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        if (path.parent / external).exists():
            (path.parent / external).unlink()  # onnx appends to an existing external-data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))


def export_all(text, unet, vae, flavour, out_dir):
    f16 = flavour == "fp16io"
    io_dtype = torch.float16 if f16 else torch.float32
    ids_dtype = torch.int64 if flavour == "int64" else torch.int32
    ts_dtype = {"int64": torch.int64, "fp16io": torch.float16}.get(flavour, torch.float32)

    print(f"  exporting {flavour} -> {out_dir.relative_to(ROOT)}")
    if out_dir.exists():
        shutil.rmtree(out_dir)

    te = export(TextEncoder(text, ids_dtype, io_dtype), (torch.ones(1, 77, dtype=ids_dtype),),
                ["input_ids"], ["last_hidden_state", "pooler_output"],
                {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"},
                 "pooler_output": {0: "batch"}})
    save(te, out_dir / "text_encoder" / "model.onnx")

    un = export_unet(unet, io_dtype, ts_dtype, scalar=False)
    external = {"int64": "model.onnx_data", "fp32": "weights.pb"}.get(flavour)
    save(un, out_dir / "unet" / "model.onnx", external)

    vd = export(VaeDecoder(vae, io_dtype), (torch.randn(1, 4, 8, 8).to(io_dtype),), ["latent_sample"], ["sample"],
                {"latent_sample": {0: "batch", 2: "height", 3: "width"},
                 "sample": {0: "batch", 2: "height", 3: "width"}})
    save(vd, out_dir / "vae_decoder" / "model.onnx")
    # private keys dropped: `_use_default_values` comes from a set, so its order changes per run
    vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    (out_dir / "vae_decoder" / "config.json").write_text(json.dumps(vae_config, indent=2, sort_keys=True) + "\n")

    write_clip_tokenizer(out_dir / "tokenizer", tokenizer_json=flavour == "int64")
    (out_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    (out_dir / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    index = {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": [None, None],
    }
    (out_dir / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def export_unet(unet, io_dtype, ts_dtype, scalar):
    # Trace with an odd latent size (9x9): diffusers' UNet then takes its `upsample_size` path,
    # which reads skip-connection shapes at run time, so the graph works for every latent size
    # (any multiple-of-8 image), not only sizes divisible by the UNet's total downsampling.
    sample = torch.randn(2, 4, 9, 9).to(io_dtype)
    ts = torch.tensor(981, dtype=ts_dtype) if scalar else torch.tensor([981], dtype=ts_dtype)
    ehs = torch.randn(2, 77, TEXT_HIDDEN).to(io_dtype)
    axes = {"sample": {0: "batch", 1: "channels", 2: "height", 3: "width"},
            "encoder_hidden_states": {0: "batch", 1: "sequence"},
            "out_sample": {0: "batch", 2: "height", 3: "width"}}
    if not scalar:
        axes["timestep"] = {0: "batch"}
    return export(Unet(unet, io_dtype), (sample, ts, ehs), ["sample", "timestep", "encoder_hidden_states"],
                  ["out_sample"], axes)


def describe(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for kind, items in (("in ", sess.get_inputs()), ("out", sess.get_outputs())):
        for x in items:
            print(f"      {kind} {x.name}: {x.type} {x.shape}")
    return sess


def dir_size(p):
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())


def params(m):
    return sum(p.numel() for p in m.parameters())


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # calibration results must not depend on the machine's core count
    tok_dir = ROOT / "onnx" / ".tok-tmp"
    write_clip_tokenizer(tok_dir)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    shutil.rmtree(tok_dir)

    text, unet, vae = build_models()
    calibrate(text, unet, vae, tok)
    print(f"params: text_encoder {params(text):,} (token embedding {text.get_input_embeddings().weight.numel():,}), "
          f"unet {params(unet):,}, vae decoder {params(vae.decoder) + params(vae.post_quant_conv):,}")
    sanity(text, unet, vae, tok)

    out = {
        "fp32": ROOT / "onnx" / "tiny-sd15",
        "int64": ROOT / "onnx" / "tiny-sd15-int64",
        "fp16io": ROOT / "tests" / "fixtures" / "models" / "tiny-sd15-fp16io",
    }
    for flavour, d in out.items():
        export_all(text, unet, vae, flavour, d)
    scalar_dir = ROOT / "tests" / "fixtures" / "models" / "unet-scalar-timestep"
    if scalar_dir.exists():
        shutil.rmtree(scalar_dir)
    print(f"  exporting scalar-timestep unet -> {scalar_dir.relative_to(ROOT)}")
    save(export_unet(unet, torch.float32, torch.float32, scalar=True), scalar_dir / "unet" / "model.onnx")

    print("ONNX signatures:")
    for d in list(out.values()) + [scalar_dir]:
        for comp in ("text_encoder", "unet", "vae_decoder"):
            p = d / comp / "model.onnx"
            if p.exists():
                print(f"  {p.relative_to(ROOT)}")
                describe(p)
    check_ort_agreement(out, scalar_dir, text, unet, tok)

    total = 0
    print("sizes:")
    for d in list(out.values()) + [scalar_dir]:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                total += f.stat().st_size
                print(f"  {f.stat().st_size:>10,}  {f.relative_to(ROOT)}")
    print(f"  total {total:,} bytes")


@torch.no_grad()
def sanity(text, unet, vae, tok):
    g = torch.Generator().manual_seed(7)
    cond = text(tokenize(tok, "a red house by the lake")).last_hidden_state
    x = torch.randn(1, 4, 8, 8, generator=g)
    for t in (1.0, 500.0, 999.0):
        y = unet(x, torch.tensor([t]), cond).sample
        print(f"sanity: unet out t={t:g}: mean {y.mean():.3f} std {y.std():.3f}")
    for steps, guidance in ((10, 7.5), (20, 7.5), (20, 1.0)):
        lat = simulate(unet, text, tok, steps=steps, guidance=guidance, seed=3)
        img = vae.decode(lat / 0.18215).sample
        u8 = (torch.clamp(img / 2 + 0.5, 0, 1) * 255).round()
        print(f"sanity: {steps} steps PNDM g={guidance}: finite {bool(torch.isfinite(lat).all())}, latents std {lat.std():.3f} "
              f"range [{lat.min():.2f}, {lat.max():.2f}]; image mean {u8.mean():.1f} std {u8.std():.1f}, "
              f"clipped to 0: {(u8 == 0).float().mean():.1%}, to 255: {(u8 == 255).float().mean():.1%}, "
              f"distinct levels {len(torch.unique(u8))}")


def check_ort_agreement(out, scalar_dir, text, unet, tok):
    """All flavours carry the same weights: their outputs must agree with each other and torch."""
    ids = tokenize(tok, "a red house by the lake").numpy()
    rng = np.random.RandomState(0)
    x = rng.randn(2, 4, 8, 12).astype(np.float32)
    ehs = rng.randn(2, 77, TEXT_HIDDEN).astype(np.float32)
    with torch.no_grad():
        ref = unet(torch.from_numpy(x), torch.tensor([801.0]), torch.from_numpy(ehs)).sample.numpy()
        ref_text = text(torch.from_numpy(ids)).last_hidden_state.numpy()

    def sess(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])

    feeds = {
        "fp32": (np.int32, np.float32, np.array([801.0], np.float32)),
        "int64": (np.int64, np.float32, np.array([801], np.int64)),
        "fp16io": (np.int32, np.float16, np.array([801.0], np.float16)),
    }
    for flavour, d in out.items():
        ids_t, f_t, ts = feeds[flavour]
        te = sess(d / "text_encoder" / "model.onnx").run(None, {"input_ids": ids.astype(ids_t)})[0]
        y = sess(d / "unet" / "model.onnx").run(None, {"sample": x.astype(f_t), "timestep": ts,
                                                      "encoder_hidden_states": ehs.astype(f_t)})[0]
        print(f"  agreement {flavour}: text max|diff| {np.abs(te.astype(np.float32) - ref_text).max():.2e}, "
              f"unet max|diff| {np.abs(y.astype(np.float32) - ref).max():.2e} (latents 8x12)")
    y = sess(scalar_dir / "unet" / "model.onnx").run(None, {"sample": x, "timestep": np.array(801.0, np.float32),
                                                           "encoder_hidden_states": ehs})[0]
    print(f"  agreement scalar-timestep: unet max|diff| {np.abs(y - ref).max():.2e}")
    # odd latent sizes (image sizes that are multiples of 8 but not 16) must work too
    v = sess(out["fp32"] / "unet" / "model.onnx").run(None, {"sample": x[:, :, :7, :9], "timestep": np.array([801.0], np.float32),
                                                          "encoder_hidden_states": ehs})[0]
    with torch.no_grad():
        r = unet(torch.from_numpy(x[:, :, :7, :9].copy()), torch.tensor([801.0]), torch.from_numpy(ehs)).sample.numpy()
    print(f"  odd latent 7x9: out shape {v.shape}, max|diff| vs torch {np.abs(v - r).max():.2e}")


if __name__ == "__main__":
    main()
