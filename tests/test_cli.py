import os
import subprocess
import sys

import pytest

from gemma3_tf import cli


def test_presets_lists_every_preset(capsys):
    cli.main(["presets"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 17  # header + 16 presets
    assert any(line.startswith("gemma3_27b ") and "27,432,062,576" in line for line in lines)


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "gemma3-tf")
    result = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("gemma3-tf ")


def test_generate_prints_the_completion_and_speed(tmp_path, tiny_proto, capsys):
    import gemma3_tf
    from keras_hub_oracle import TEXT_CONFIG, randomize

    backbone = gemma3_tf.Gemma3Backbone(**dict(TEXT_CONFIG, vocabulary_size=400))
    randomize(backbone)
    preprocessor = gemma3_tf.Gemma3CausalLMPreprocessor(gemma3_tf.Gemma3Tokenizer(tiny_proto), sequence_length=32)
    gemma3_tf.Gemma3CausalLM(backbone, preprocessor).save_to_preset(str(tmp_path))
    cli.main(["generate", "Hello world", "--preset", str(tmp_path), "--max_length", "20", "--sampler", "top_k",
              "--seed", "1"])
    first = capsys.readouterr()
    assert "new tokens after 5 prompt tokens" in first.err and "tokens/s" in first.err  # BOS + 4 pieces
    cli.main(["generate", "Hello world", "--preset", str(tmp_path), "--max_length", "20", "--sampler", "top_k",
              "--seed", "1"])
    assert capsys.readouterr().out == first.out  # seeded: the same completion
    cli.main(["generate", "Hello world", "--preset", str(tmp_path), "--max_length", "20", "--sampler", "top_k",
              "--seed", "1", "--stream"])
    streamed = capsys.readouterr()
    assert streamed.out == first.out and first.err.split(" in ")[0] == streamed.err.split(" in ")[0]
