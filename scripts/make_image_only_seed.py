"""Writes fuzz/seeds/generation/image_only: an image-only generation folder (a service's answer)
in the `generation` fuzz target's layout (u16 metadata length, u32 latents length = 0, then
metadata.json and image.png), so the fuzzer starts inside the image-only branch of
generation::read. Standard library only; run from the repository root."""
import hashlib
import json
import struct
import zlib

W, H = 8, 8
pixels = bytes((x * 31 + y * 17 + c * 7) % 256 for y in range(H) for x in range(W) for c in range(3))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


rows = b"".join(b"\x00" + pixels[y * W * 3:(y + 1) * W * 3] for y in range(H))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
metadata = {
    "case": "fox",
    "parameters": {"prompt": "a red fox", "negative_prompt": None, "seed": 7, "steps": 4,
                   "guidance_scale": 7.5, "width": W, "height": H, "scheduler": "euler-a",
                   "karras_sigmas": False, "noise_file": None, "target": "service",
                   "sampler": "Euler a"},
    "service": {"kind": "a1111", "origin": "http://127.0.0.1:7860",
                "info": {"a1111": {"sd_model_hash": "6ce0161689", "version": "v1.10.1"}}},
    "outputs": {"image": {"file": "image.png", "width": W, "height": H,
                          "sha256_rgb": hashlib.sha256(pixels).hexdigest()}},
}
meta = json.dumps(metadata, indent=2).encode()
with open("fuzz/seeds/generation/image_only", "wb") as f:
    f.write(struct.pack("<HI", len(meta), 0) + meta + png)
