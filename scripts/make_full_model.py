"""Build a full-size SD1.5-architecture ONNX export with random weights, for benchmarks.

Same layout as onnx/tiny-sd15 (diffusers' convert script: input_ids int32, timestep float32
[batch], UNet weights in unet/weights.pb), but SD1.5's real widths: CLIP ViT-L/14 text encoder
(768 wide, 12 layers), UNet 320/640/1280/1280 with 2 layers per block and 8 heads (860 M
parameters, 3.4 GB), VAE decoder 128/256/512/512. Weights are seeded random, initialised as the
tiny model's are (variance-preserving) so a 25-step generation stays finite. About 4.3 GB; it is
never committed. It is what the timings in the README's quick-check and cold-start benchmarks
ran on, in place of real SD1.5 weights, which cannot be downloaded here: every kernel, shape and
byte count is SD1.5's, only the values differ.

    /work/venv/ref/bin/python scripts/make_full_model.py OUT_DIR
"""
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_model import (  # noqa: E402
    OPSET, SCHEDULER_CONFIG, TextEncoder, Unet, VaeDecoder, reinit,
)

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

SEED = 1505
ROOT = Path(__file__).resolve().parent.parent


def build():
    torch.manual_seed(SEED)
    cfg = CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, hidden_size=768, intermediate_size=3072,
        num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    cfg._attn_implementation = "eager"
    text = CLIPTextModel(cfg).eval()
    # diffusers' defaults are SD1.5's UNet (320/640/1280/1280, 2 layers, 8 heads, 768 context).
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    ).eval()
    for m in (text, unet, vae):
        reinit(m)
    return text, unet, vae


def export(module, args, names, outs, axes, path, external=None):
    """Export through a file (a >2 GB graph cannot go through memory), then save it with its
    weights in one external file, as the diffusers convert script does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(module, args, str(raw), dynamo=False, opset_version=OPSET,
                          input_names=names, output_names=outs, dynamic_axes=axes,
                          do_constant_folding=True)
        model = onnx.load(str(raw))
        if external:
            onnx.save_model(model, str(path), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=external,
                            convert_attribute=False)
        else:
            onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1]).resolve()
    if out.exists():
        shutil.rmtree(out)
    text, unet, vae = build()
    n = sum(p.numel() for p in unet.parameters())
    print(f"UNet {n / 1e6:.0f} M parameters")
    with torch.no_grad():
        t0 = time.time()
        export(TextEncoder(text, torch.int32, torch.float32), (torch.ones(1, 77, dtype=torch.int32),),
               ["input_ids"], ["last_hidden_state", "pooler_output"],
               {"input_ids": {0: "batch", 1: "sequence"},
                "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}},
               out / "text_encoder" / "model.onnx")
        print(f"text encoder exported in {time.time() - t0:.0f} s")
        t0 = time.time()
        # An odd latent size traces the UNet's upsample_size path: the graph then runs at any
        # multiple-of-8 image size (see make_tiny_model.export_unet).
        export(Unet(unet, torch.float32),
               (torch.randn(2, 4, 9, 9), torch.tensor([981.0]), torch.randn(2, 77, 768)),
               ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
               {"sample": {0: "batch", 1: "channels", 2: "height", 3: "width"},
                "timestep": {0: "batch"}, "encoder_hidden_states": {0: "batch", 1: "sequence"},
                "out_sample": {0: "batch", 2: "height", 3: "width"}},
               out / "unet" / "model.onnx", external="weights.pb")
        print(f"UNet exported in {time.time() - t0:.0f} s")
        t0 = time.time()
        export(VaeDecoder(vae, torch.float32), (torch.randn(1, 4, 8, 8),), ["latent_sample"], ["sample"],
               {"latent_sample": {0: "batch", 2: "height", 3: "width"},
                "sample": {0: "batch", 2: "height", 3: "width"}},
               out / "vae_decoder" / "model.onnx")
        print(f"VAE decoder exported in {time.time() - t0:.0f} s")
    vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    (out / "vae_decoder" / "config.json").write_text(json.dumps(vae_config, indent=2, sort_keys=True) + "\n")
    # The real CLIP vocabulary, as the tiny model ships it (its script builds it with open_clip).
    shutil.copytree(ROOT / "onnx" / "tiny-sd15" / "tokenizer", out / "tokenizer")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    index = {
        "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"], "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": [None, None],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
