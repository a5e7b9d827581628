"""quantize (needs the quantize extra; skipped without it): a compressed-tensors checkpoint that reloads with nearly
the same perplexity and fewer bytes; adapters, quantized inputs and missing calibration data are refused."""

from __future__ import annotations

import json

import pytest

from self_model.quantize import main as quantize_main
from tests.helpers import SFT_EVAL, random_model_dir

pytest.importorskip("auto_round")


@pytest.fixture(scope="module")
def model_128(tmp_path_factory):
    """A random tiny model 128 wide (AutoRound's int4 groups are 128 columns)."""
    return random_model_dir(tmp_path_factory.mktemp("quantize") / "model", hidden_size=128, intermediate_size=256)


def text_perplexity(model_dir) -> float:
    from self_model.evaluate import PerplexityTask, perplexity
    from self_model.generation import open_engine
    from self_model.outputs import OutputDir

    engine = open_engine(OutputDir.open(str(model_dir)), chat=False)
    return perplexity(engine, PerplexityTask(file=str(SFT_EVAL), format="text", text_fields=["messages"]), 0)["perplexity"]


@pytest.mark.parametrize(("scheme", "quant_format", "margin"), [("w4a16", "pack-quantized", 1.05),
                                                               ("w8a8", "int-quantized", 1.01)])
def test_quantized_export_reloads_smaller_and_close(model_128, tmp_path, scheme, quant_format, margin):
    out = tmp_path / scheme
    assert quantize_main(["--model", str(model_128), "--scheme", scheme, "--output_dir", str(out), "--calibration",
                          str(SFT_EVAL), "--samples", "8", "--seqlen", "64", "--iters", "0"]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == quant_format
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["size_on_disk"]["bytes"] < 0.8 * manifest["size_on_disk"]["source_bytes"]
    assert text_perplexity(out) < margin * text_perplexity(model_128)


def test_refusals(model_128, tiny_outputs, tmp_path, capsys):
    for argv, message in (
        (["--model", str(tiny_outputs["lora"])], "is an adapter: merge it first"),
        (["--model", str(model_128)], "records no eval file that exists here"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            quantize_main([*argv, "--scheme", "w4a16", "--output_dir", str(tmp_path / "q")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
