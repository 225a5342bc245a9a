#!/usr/bin/env python3
"""Copy the noise ground truth the tests need into tests/fixtures/noise/.

Run from the repository root with the reference venv:
    /work/venv/ref/bin/python scripts/extract_noise_fixtures.py [path/to/noise.npz]

The reference archive (keys `source|dtype|seed|shape|call`) is not shipped, so the tests read
one .npy per entry plus index.json. To stay under ~3 MB, entries whose values are a C-order
prefix of another stored entry are not written; index.json points them at the longer entry
with `prefix` = element count. This holds because all three generators fill in C order from a
sequential stream:
  * numpy / torch-cpu call 0 of 1x4x64x64 is the first 16384 values of call 0 of 1x4x64x96
    (same fresh stream; torch-cpu: both sizes are multiples of 16, so no tail refill);
  * torch-cuda calls 0 and 1 of 1x4x64x64 are prefixes of the same call of 1x4x64x96 (element i
    uses Philox counter i, and both sizes advance the offset by 4 per call).
The script checks each prefix claim before relying on it.
"""
import json
import os
import sys

import numpy as np

SRC = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/reference/noise.npz"
OUT = "tests/fixtures/noise"

# (source, dtype, shape) whose entries (given calls) are replaced by a prefix of the same
# key with shape 1x4x64x96.
PREFIX_OF_96 = {
    ("numpy", "f64", "1x4x64x64"): ("0",),
    ("torch-cpu", "f32", "1x4x64x64"): ("0",),
    ("torch-cuda", "f32", "1x4x64x64"): ("0", "1"),
}

# torch-cuda float16 equals torch-cuda float32 cast to f16 (checked below for every entry), so
# the large f16 entries add nothing but size: they are not written and not indexed. The small
# shapes (3, 17, 1x4x8x8) are kept so the tests exercise the F16 path against real f16 data.
F16_DROPPED_SHAPES = ("1x4x64x64", "1x4x64x96")


def main():
    if not os.path.isdir("tests") or not os.path.isfile("Cargo.toml"):
        sys.exit("run from the repository root")
    z = np.load(SRC)
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".npy") and not (f.startswith("seq_torch") and not has_torch()):
            os.remove(os.path.join(OUT, f))
    index = []
    dropped = []
    total = 0
    for key in z.files:
        source, dtype, seed, shape, call = key.split("|")
        arr = np.ascontiguousarray(z[key])
        expect_shape = [int(s) for s in shape.split("x")]
        assert list(arr.shape) == expect_shape, key
        entry = {
            "key": key,
            "source": source,
            "dtype": dtype,
            "seed": int(seed),
            "shape": expect_shape,
            "call": int(call),
            # Entries with the same stream are successive draws from one generator.
            "stream": f"{source}|{dtype}|{seed}|{shape}",
        }
        if source == "torch-cuda" and dtype == "f16":
            f32 = z["|".join([source, "f32", seed, shape, call])]
            assert np.array_equal(f32.astype(np.float16).view(np.uint16), arr.view(np.uint16)), key
            if shape in F16_DROPPED_SHAPES:
                dropped.append(key)
                continue
        calls = PREFIX_OF_96.get((source, dtype, shape))
        if calls and call in calls:
            long_key = "|".join([source, dtype, seed, "1x4x64x96", call])
            long = z[long_key].reshape(-1)
            # Verify the prefix claim on the data itself.
            assert np.array_equal(long[: arr.size].view(np.uint8), arr.reshape(-1).view(np.uint8)), key
            entry["file"] = fname(long_key)
            entry["prefix"] = int(arr.size)
        else:
            entry["file"] = fname(key)
            path = os.path.join(OUT, entry["file"])
            np.save(path, arr)
            total += os.path.getsize(path)
        index.append(entry)
    total += numpy_f16_cast(z)
    index += torch_sequences()
    for e in index:
        total += os.path.getsize(os.path.join(OUT, e["file"])) if e.get("generated") else 0
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump({"source": os.path.basename(SRC), "dropped": dropped, "entries": index}, f, indent=1)
        f.write("\n")
    print(f"dropped (f16 = f32 cast, verified): {len(dropped)}")
    print(f"{len(index)} entries, {total / 1e6:.2f} MB of .npy in {OUT}")


def numpy_f16_cast(z):
    """numpy's own float64 -> float16 rounding (what diffusers' ONNX pipeline applies to the
    float64 noise for fp16 models), on values where rounding through float32 first would give
    a different f16, plus the first 4096 ordinary values. Tests check our converter on these."""
    a = np.concatenate([z[k].reshape(-1) for k in z.files if k.startswith("numpy|")])
    direct = a.astype(np.float16)
    twice = a.astype(np.float32).astype(np.float16)
    tricky = a[direct.view(np.uint16) != twice.view(np.uint16)]
    vals = np.concatenate([tricky, a[:4096]])
    np.save(os.path.join(OUT, "numpy_f16cast_in.npy"), vals)
    np.save(os.path.join(OUT, "numpy_f16cast_out.npy"), vals.astype(np.float16))
    print(f"numpy f16 cast: {tricky.size} values where f64->f32->f16 differs from f64->f16")
    return sum(os.path.getsize(os.path.join(OUT, f)) for f in ("numpy_f16cast_in.npy", "numpy_f16cast_out.npy"))


# Draw sequences of mixed sizes from one generator, generated here with the installed numpy and
# torch (CPU, float32; the reference archive only has repeated draws of one shape). They pin
# down state carried across calls: numpy's cached polar value after an odd count, torch's cached
# double from a < 16 draw surviving a >= 16 draw, and torch's tail refill.
SEQ_SHAPES = [[3], [17], [1], [1, 4, 8, 8], [5], [33], [2]]
SEQ_SEED = 7


def torch_sequences():
    entries = []
    rs = np.random.RandomState(SEQ_SEED)
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not importable: torch-cpu sequence fixtures not regenerated")
    g = torch.Generator("cpu").manual_seed(SEQ_SEED) if torch else None
    for call, shape in enumerate(SEQ_SHAPES):
        shape_s = "x".join(map(str, shape))
        gens = [("numpy", "f64", rs.randn(*shape))]
        if torch:
            gens.append(("torch-cpu", "f32", torch.randn(shape, generator=g).numpy()))
        for source, dtype, arr in gens:
            name = f"seq_{source}_{dtype}_s{SEQ_SEED}_{shape_s}_c{call}.npy"
            np.save(os.path.join(OUT, name), np.ascontiguousarray(arr))
            entries.append({
                "key": f"{source}|{dtype}|{SEQ_SEED}|{shape_s}|{call}",
                "source": source, "dtype": dtype, "seed": SEQ_SEED, "shape": shape, "call": call,
                "stream": f"{source}|{dtype}|{SEQ_SEED}|sequence",
                "file": name, "generated": f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else ""),
            })
    return entries


def has_torch():
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def fname(key):
    source, dtype, seed, shape, call = key.split("|")
    return f"{source}_{dtype}_s{seed}_{shape}_c{call}.npy"


if __name__ == "__main__":
    main()
