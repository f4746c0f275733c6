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
