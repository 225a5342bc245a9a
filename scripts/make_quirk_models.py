"""Write variants of the tiny export that real exports exhibit, for tests of the checks around them.

- unet-fixed-upsample.onnx: the tiny UNet with its up-sampling turned into a constant-scale
  Resize, which is what exporting at a latent size divisible by every down-sampling gives (the
  tiny export is traced at an odd size and follows the skip connection's shape instead). Such a
  UNet fails inside ONNX Runtime on a latent side its down-sampling leaves odd. It references the
  tiny UNet's weights.pb, so it is dropped into a copy of onnx/tiny-sd15/unet/.
- vae-initializer-input.onnx: the tiny VAE decoder with one weight also listed as a graph input
  (old exporters did this); ONNX Runtime logs a warning when it loads it.
- unet-fixed-batch.onnx: the tiny UNet with its batch dimension fixed at 2 (the batch of one image
  under guidance), as exports traced without a dynamic batch axis have it; a batch_size case
  must be refused before it runs. It references the tiny UNet's weights.pb, like the first.
- text-encoder-small-vocab.onnx: the tiny text encoder with its token embedding cut to 1000 rows,
  so a prompt's ids (BOS is 49406) fall outside it and ONNX Runtime fails, and logs, while running.

Needs only the `onnx` package: python scripts/make_quirk_models.py  (writes tests/fixtures/models/quirks/)
"""
from pathlib import Path

import onnx
import onnx.numpy_helper
from onnx import TensorProto, helper

OUT = Path("tests/fixtures/models/quirks")


def fixed_upsample():
    m = onnx.load("onnx/tiny-sd15/unet/model.onnx", load_external_data=False)
    g = m.graph
    resizes = [n for n in g.node if n.op_type == "Resize"]
    assert resizes, "the tiny UNet has no Resize"
    for i, n in enumerate(resizes):
        scales = f"fixed_upsample_scales_{i}"
        g.initializer.append(helper.make_tensor(scales, TensorProto.FLOAT, [4], [1.0, 1.0, 2.0, 2.0]))
        inputs = list(n.input)
        while len(inputs) < 3:
            inputs.append("")
        del n.input[:]
        n.input.extend([inputs[0], inputs[1], scales])
    onnx.save(m, OUT / "unet-fixed-upsample.onnx")


def fixed_batch():
    m = onnx.load("onnx/tiny-sd15/unet/model.onnx", load_external_data=False)
    for vi in list(m.graph.input) + list(m.graph.output):
        if vi.name in ("sample", "encoder_hidden_states", "out_sample"):
            dim = vi.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_value = 2
    onnx.save(m, OUT / "unet-fixed-batch.onnx")


def initializer_input():
    m = onnx.load("onnx/tiny-sd15/vae_decoder/model.onnx")
    g = m.graph
    w = next(t for t in g.initializer if len(t.dims) == 1)
    g.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    onnx.save(m, OUT / "vae-initializer-input.onnx")


def small_vocab():
    m = onnx.load("onnx/tiny-sd15/text_encoder/model.onnx")
    g = m.graph
    emb = next(t for t in g.initializer if len(t.dims) == 2 and t.dims[0] == 49408)
    arr = onnx.numpy_helper.to_array(emb)[:1000].copy()
    g.initializer.remove(emb)
    g.initializer.append(onnx.numpy_helper.from_array(arr, emb.name))
    onnx.save(m, OUT / "text-encoder-small-vocab.onnx")


def fuzz_seeds():
    """Small graphs for the onnx_graph fuzz target: stride-2 convs with each kind of up-sampling."""
    out = Path("fuzz/seeds/onnx_graph")
    out.mkdir(parents=True, exist_ok=True)

    def model(nodes, name):
        g = helper.make_graph(nodes, "unet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), out / f"{name}.onnx")

    def conv(i, o, s):
        return helper.make_node("Conv", [i, "w"], [o], strides=[s, s], pads=[1, 1, 1, 1])

    model([conv("x", "a", 2), conv("a", "b", 1), helper.make_node("Resize", ["b", "", "s"], ["y"], mode="nearest")],
          "fixed_scales")
    model([conv("x", "a", 2), helper.make_node("Resize", ["a", "", "", "sz"], ["y"], mode="nearest"),
           helper.make_node("Upsample", ["y", "s"], ["z"])], "sizes_and_upsample")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    fixed_upsample()
    fixed_batch()
    initializer_input()
    small_vocab()
    fuzz_seeds()
    for p in sorted(OUT.iterdir()):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
