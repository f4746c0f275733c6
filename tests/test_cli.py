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


def run_cli(*args):
    """`gemma3-tf ARGS` in a fresh interpreter: (exit status, stdout, stderr, whether TensorFlow was imported)."""
    code = ("import sys; from gemma3_tf import cli\n"
            "try:\n    status = cli.main(sys.argv[1:])\nexcept SystemExit as stop:\n    status = stop.code\n"
            "print('tensorflow' in sys.modules, file=sys.stderr); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})  # TF's logs would show if it loaded
    *lines, imported = result.stderr.rstrip("\n").split("\n")
    return result.returncode, result.stdout, "\n".join(lines), imported == "True"


@pytest.mark.parametrize("args", [["--help"], ["export", "--help"], ["train", "--help"], ["plan", "--help"]])
def test_help_needs_no_tensorflow(args):
    status, out, err, imported = run_cli(*args)
    assert (status, err, imported) == (0, "", False)
    assert out.startswith("usage: gemma3-tf")


def test_argument_errors_are_one_usage_line_without_tensorflow():
    status, out, err, imported = run_cli("export", "--max_rows", "many", "--model_base_path", "x")
    assert (status, out, imported) == (2, "", False)
    assert err.splitlines()[-1] == "gemma3-tf export: error: argument --max_rows: invalid int value: 'many'"


def test_a_users_mistake_is_one_line_and_exit_2(capsys):
    assert cli.main(["generate", "hi", "--preset", "no_such_preset"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gemma3-tf generate: error: `preset` 'no_such_preset' is neither")
    assert error.count("\n") == 1 and error.rstrip().endswith("(--verbose shows the traceback)")
    with pytest.raises(ValueError, match="no_such_preset"):
        cli.main(["--verbose", "generate", "hi", "--preset", "no_such_preset"])
    assert cli.main(["batch-infer", "--model_path", "/no/such/model", "--input", "x.jsonl", "--output_dir", "y"]) == 2
    assert capsys.readouterr().err.startswith("gemma3-tf batch-infer: error: no saved_model.pb in /no/such/model")
