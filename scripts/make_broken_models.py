"""Write tiny ONNX graphs that look like SD1.5 components but are wrong, for the loader's error tests.

Each is a few hundred bytes of Identity/Cast nodes; tests drop one into a copy of onnx/tiny-sd15 in
place of the real component and check the error names the file and what was expected.

usage: python scripts/make_broken_models.py   (writes tests/fixtures/models/broken/)
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path("tests/fixtures/models/broken")


def graph(name, inputs, outputs, nodes, initializers=()):
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="make_broken_models")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def f(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def unet_with(sample_shape, names=("sample", "timestep", "encoder_hidden_states"), ts_shape=("batch",)):
    s, t, e = names
    ins = [f(s, sample_shape), f(t, list(ts_shape)), f(e, ["batch", 77, 8])]
    outs = [f("out_sample", sample_shape)]
    # Identity keeps the graph valid; the loader must reject it before anything runs.
    return graph("unet", ins, outs, [helper.make_node("Identity", [s], ["out_sample"])])


def main():
    models = {
        # A 3-channel UNet: an SD1.5 UNet works on 4 latent channels.
        "unet-3-channels.onnx": unet_with(["batch", 3, "h", "w"]),
        # Names from some other model family.
        "unet-wrong-names.onnx": unet_with(["batch", 4, "h", "w"], names=("x", "t", "context")),
        # A rank-2 timestep.
        "unet-rank2-timestep.onnx": unet_with(["batch", 4, "h", "w"], ts_shape=("batch", 1)),
        # A text encoder whose ids are float.
        "text-encoder-float-ids.onnx": graph(
            "text_encoder",
            [f("input_ids", ["batch", 77])],
            [f("last_hidden_state", ["batch", 77, 1])],
            [helper.make_node("Unsqueeze", ["input_ids", "axes"], ["last_hidden_state"])],
            [helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
        ),
        # A VAE decoder producing 4 channels instead of RGB.
        "vae-4-channel-output.onnx": graph(
            "vae_decoder",
            [f("latent_sample", ["batch", 4, "h", "w"])],
            [f("sample", ["batch", 4, "h", "w"])],
            [helper.make_node("Identity", ["latent_sample"], ["sample"])],
        ),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        onnx.save(m, OUT / name)
        print(OUT / name, (OUT / name).stat().st_size)


if __name__ == "__main__":
    main()
