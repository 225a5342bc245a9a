"""Cold start of diffusers' OnnxStableDiffusionPipeline, to set the monitor's beside.

Run as a fresh process. Measures, from BENCH_T0 (the shell's clock just before it started this
interpreter, seconds since the epoch) or else the interpreter's own start: imports done, sessions
loaded (the three ONNX Runtime sessions, tokenizer, scheduler), the first UNet call, and the end
of one generation of the write-up's landscape case (512x512, 25 PNDM steps, guidance 7.5,
numpy noise). The sessions are built as the pipeline's own loader would, with default session
options and the CPU provider (diffusers' OnnxRuntimeModel.load_model passes provider_options=[],
which ONNX Runtime 1.31 rejects). Prints one JSON line.

    BENCH_T0=$(date +%s.%N) /work/venv/ref/bin/python scripts/bench_cold_diffusers.py MODEL_DIR [STEPS]
"""
import os
import sys
import time

T0 = float(os.environ.get("BENCH_T0") or time.time())

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline, PNDMScheduler  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

T_IMPORTED = time.time()
first_unet = []
_orig_run = ort.InferenceSession.run


def _run(self, output_names, input_feed, *a, **k):
    if "sample" in input_feed and "timestep" in input_feed and not first_unet:
        first_unet.append(time.time())
    return _orig_run(self, output_names, input_feed, *a, **k)


ort.InferenceSession.run = _run


def main():
    model, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25

    def sess(comp):
        return OnnxRuntimeModel(ort.InferenceSession(os.path.join(model, comp, "model.onnx"),
                                                     providers=["CPUExecutionProvider"]))

    config = json.load(open(os.path.join(model, "scheduler", "scheduler_config.json")))
    pipe = OnnxStableDiffusionPipeline(
        vae_encoder=None, vae_decoder=sess("vae_decoder"), text_encoder=sess("text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(os.path.join(model, "tokenizer")), unet=sess("unet"),
        scheduler=PNDMScheduler.from_config(config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    t_loaded = time.time()
    pipe(prompt="a beautiful sunset over mountains, digital art, detailed",
         negative_prompt="blurry, low quality, distorted", height=512, width=512,
         num_inference_steps=steps, guidance_scale=7.5, generator=np.random.RandomState(42),
         output_type="np")
    t_done = time.time()
    print(json.dumps({
        "import_s": round(T_IMPORTED - T0, 3),
        "import_load_s": round(t_loaded - T0, 3),
        "before_first_unet_s": round(first_unet[0] - T0, 3),
        "total_s": round(t_done - T0, 3),
        "onnxruntime": ort.__version__,
        "steps": steps,
    }))


if __name__ == "__main__":
    main()
