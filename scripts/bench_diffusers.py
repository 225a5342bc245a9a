"""Time diffusers' OnnxStableDiffusionPipeline on the tiny export, to compare the Rust pipeline with.

One warm-up generation, then --reps timed ones (256x256, 25 PNDM steps, guidance 7.5, CPU provider,
prompt with CFG, numpy RandomState(0) noise). For each it measures the total wall time and the time
spent inside onnxruntime.InferenceSession.run (patched at class level, so every component's calls
count); the rest is Python/numpy/torch scheduler overhead that a native pipeline could avoid.
Prints one JSON line on stdout:

    {"total_s_median": ..., "ort_run_s_median": ..., "outside_ort_share": ..., "ort_version": ...,
     "threads": ..., ...}

Run from the repository root:

    /work/venv/ref/bin/python scripts/bench_diffusers.py [--reps 5] [--intra-op-threads N] [--model DIR]

Without --intra-op-threads ONNX Runtime picks its own default ("threads": "ort-default").
Writes no files.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from diffusers import OnnxRuntimeModel, OnnxStableDiffusionPipeline, PNDMScheduler
from transformers import CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent

_ort_seconds = 0.0
_ort_calls = 0
_orig_run = ort.InferenceSession.run


def _timed_run(self, *args, **kwargs):
    global _ort_seconds, _ort_calls
    t0 = time.perf_counter()
    try:
        return _orig_run(self, *args, **kwargs)
    finally:
        _ort_seconds += time.perf_counter() - t0
        _ort_calls += 1


ort.InferenceSession.run = _timed_run


def load(model_dir, threads):
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads

    def sess(comp):
        # built directly: OnnxRuntimeModel.load_model's provider_options=[] is rejected by ORT 1.31
        return OnnxRuntimeModel(ort.InferenceSession(str(model_dir / comp / "model.onnx"), sess_options=opts,
                                                     providers=["CPUExecutionProvider"]))

    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    pipe = OnnxStableDiffusionPipeline(
        vae_encoder=None, vae_decoder=sess("vae_decoder"), text_encoder=sess("text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(str(model_dir / "tokenizer")), unet=sess("unet"),
        scheduler=PNDMScheduler.from_config(config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    global _ort_seconds, _ort_calls
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--intra-op-threads", type=int, default=None)
    p.add_argument("--model", default="onnx/tiny-sd15")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    a = p.parse_args()

    pipe = load(ROOT / a.model, a.intra_op_threads)

    def generate():
        pipe(prompt="a photo of an astronaut riding a horse on mars", height=a.size, width=a.size,
             num_inference_steps=a.steps, guidance_scale=7.5, generator=np.random.RandomState(0), output_type="np")

    generate()  # warm-up: first runs allocate arenas and pick kernels
    totals, ort_times, calls = [], [], []
    for _ in range(a.reps):
        _ort_seconds, _ort_calls = 0.0, 0
        t0 = time.perf_counter()
        generate()
        totals.append(time.perf_counter() - t0)
        ort_times.append(_ort_seconds)
        calls.append(_ort_calls)
    total, inside = statistics.median(totals), statistics.median(ort_times)
    print(json.dumps({
        "total_s_median": round(total, 6),
        "ort_run_s_median": round(inside, 6),
        "outside_ort_share": round((total - inside) / total, 4),
        "ort_version": ort.__version__,
        "threads": a.intra_op_threads if a.intra_op_threads is not None else "ort-default",
        "cpu_count": os.cpu_count(),
        "reps": a.reps,
        "model": a.model,
        "size": [a.size, a.size],
        "steps": a.steps,
        "scheduler": "pndm",
        "guidance_scale": 7.5,
        "ort_run_calls_per_generation": calls[0],
        "total_s_all": [round(t, 6) for t in totals],
        "ort_run_s_all": [round(t, 6) for t in ort_times],
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
