#!/usr/bin/env python3
"""Reference values for src/compare.rs, written to tests/fixtures/compare/.

1. metrics.json: small fixed latent pairs (float32 values) with max/mean |d|, RMSE and cosine
   computed by numpy in float64, and small uint8 image pairs with PSNR (peak 255). tests/compare.rs
   checks the Rust metrics against these to 1e-12 relative.
2. ssim/*.png + ssim.json (only with --ssim, needs scikit-image and Pillow): realistic
   perturbations of reference images from tests/fixtures/reference/, with scikit-image's Gaussian
   SSIM for each, so the test can print image-compare's SSIM next to it (the two algorithms differ,
   see `compare::ssim`).

Usage: /work/venv/ref/bin/python scripts/make_compare_fixtures.py [--ssim]
"""

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "compare"


def latent_case(name, a, b, shape):
    a = np.asarray(a, dtype=np.float32).reshape(shape)
    b = np.asarray(b, dtype=np.float32).reshape(shape)
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = np.abs(x - y)
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    return {
        "name": name,
        "shape": list(shape),
        "run": [float(v) for v in a.ravel()],
        "baseline": [float(v) for v in b.ravel()],
        "max_abs": float(d.max()),
        "mean_abs": float(d.mean()),
        "rmse": float(np.sqrt(np.mean(d * d))),
        "cosine": cos,
    }


def image_case(name, a, b):
    a = np.asarray(a, dtype=np.uint8)
    b = np.asarray(b, dtype=np.uint8)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    h, w, _ = a.shape
    return {
        "name": name,
        "width": w,
        "height": h,
        "run": [int(v) for v in a.ravel()],
        "baseline": [int(v) for v in b.ravel()],
        "psnr_db": float(10 * np.log10(255.0**2 / mse)),
        "pixels_differing": int(np.any(a != b, axis=2).sum()),
        "max_level_diff": int(np.abs(a.astype(int) - b.astype(int)).max()),
    }


def metrics():
    rng = np.random.RandomState(7)
    a = rng.randn(1, 4, 4, 4).astype(np.float32)
    latents = [
        latent_case("small_noise_1x4x4x4", a, a + (1e-4 * rng.randn(*a.shape)).astype(np.float32), a.shape),
        latent_case("one_value_3", [1.0, 2.0, 3.0], [1.0, 2.0, 3.5], (3,)),
        latent_case("large_drift_2x8", rng.randn(16), rng.randn(16), (2, 8)),
        latent_case("scaled_1x4x2x2", a.ravel()[:16], 1.001 * a.ravel()[:16], (1, 4, 2, 2)),
    ]
    img = rng.randint(0, 256, size=(3, 4, 3))
    noisy = np.clip(img + rng.randint(-3, 4, size=img.shape), 0, 255)
    one = img.copy()
    one[1, 2, 0] = (one[1, 2, 0] + 40) % 256
    images = [
        image_case("noise_pm3_4x3", noisy, img),
        image_case("one_pixel_4x3", one, img),
        image_case("black_white_2x1", [[[0, 0, 0], [255, 255, 255]]], [[[255, 255, 255], [0, 0, 0]]]),
    ]
    return {"generator": "scripts/make_compare_fixtures.py", "latents": latents, "images": images}


def perturbations(img, rng):
    """Drift-like changes an 8-bit SD output might suffer, from tiny to gross."""
    x = img.astype(np.int16)
    h, w, _ = img.shape

    def lsb(frac):
        mask = rng.rand(*x.shape) < frac
        return x + mask * rng.choice([-1, 1], size=x.shape)

    def box_blur(v):
        p = np.pad(v, ((1, 1), (1, 1), (0, 0)), mode="edge").astype(np.float64)
        s = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3))
        return np.round(s / 9)

    patch = x.copy()
    patch[h // 4 : h // 4 + 16, w // 4 : w // 4 + 16] = rng.randint(0, 256, size=(16, 16, 3))
    cases = {
        "lsb_1pct": lsb(0.01),
        "lsb_10pct": lsb(0.10),
        "lsb_50pct": lsb(0.50),
        "gauss_sigma2": x + np.round(2 * rng.randn(*x.shape)),
        "gauss_sigma5": x + np.round(5 * rng.randn(*x.shape)),
        "brightness_plus2": x + 2,
        "box_blur_3x3": box_blur(x),
        "patch_16x16": patch,
    }
    return {k: np.clip(v, 0, 255).astype(np.uint8) for k, v in cases.items()}


def ssim_fixtures():
    from PIL import Image
    from skimage.metrics import structural_similarity

    rng = np.random.RandomState(11)
    out_dir = OUT / "ssim"
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for ref in ["pndm_64x64_s10_g7.5_neg", "pndm_128x128_s4_g7.5"]:
        base = np.asarray(Image.open(ROOT / "tests/fixtures/reference" / ref / "image.png").convert("RGB"))
        for name, img in perturbations(base, rng).items():
            file = f"{ref}__{name}.png"
            Image.fromarray(img).save(out_dir / file)
            s = structural_similarity(
                img, base, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False,
            )
            cases.append({"reference": ref, "perturbation": name, "file": file, "skimage_gaussian_ssim": float(s)})
    meta = {
        "generator": "scripts/make_compare_fixtures.py --ssim",
        "skimage": "structural_similarity(channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False) (Wang et al. 2004 settings; mean over channels)",
        "cases": cases,
    }
    (OUT / "ssim.json").write_text(json.dumps(meta, indent=1) + "\n")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "metrics.json").write_text(json.dumps(metrics(), indent=1) + "\n")
    if "--ssim" in sys.argv[1:]:
        ssim_fixtures()


if __name__ == "__main__":
    main()
