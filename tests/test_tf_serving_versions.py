"""Our exports (written by the project's TensorFlow) on the TensorFlow that TF Serving 2.20.0 is built on.

TF Serving releases lag TensorFlow and TensorFlow promises no forward compatibility across minor
releases, so each export is loaded as tensorflow_model_server loads it (tests/tf_serving_load.py:
session loader, warmup replay, Session.run with the SignatureDef's defaults) under TF 2.20, in a
virtualenv that the first run creates (about 1.5 minutes from PyPI) and later runs reuse.
"""

import base64
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from test_export import load_like_tf_serving
from test_preprocessing import png
from tiny_exports import PROMPTS, in_process

REQUIREMENTS = pathlib.Path(__file__).parent / "tf_serving_2_20"
VENV = pathlib.Path(__file__).parent.parent / ".venv-tf2.20"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tf_2_20_python():
    """The python of .venv-tf2.20/, (re)made when its requirements changed."""
    stamp = VENV / ".installed"
    wanted = "".join((REQUIREMENTS / name).read_text() for name in ("requirements.txt", "no-deps.txt"))
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip_install("-r", str(REQUIREMENTS / "requirements.txt"))
        pip_install("--no-deps", "-r", str(REQUIREMENTS / "no-deps.txt"))
        stamp.write_text(wanted)
    return str(VENV / "bin" / "python")


def pip_install(*args, attempts=2):
    """pip install into VENV; a second attempt after a failure (a download cut off). On failure, pip's own error
    lines: a machine whose pip config names missing find-links folders prints a warning per package, which buried
    the error itself past the end of a CI log."""
    command = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    for _ in range(attempts):
        result = subprocess.run(command, capture_output=True, text=True, timeout=1200)
        if result.returncode == 0:
            return
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "is ignored: it is neither" not in line]
    free = shutil.disk_usage(VENV).free / 2**30
    pytest.fail(f"{' '.join(command)} failed ({free:.1f} GiB free on its disk):\n" + "\n".join(lines[-40:]),
                pytrace=False)


def test_text_export_loads_warms_up_and_generates_under_tf_2_20(tf_2_20_python, tiny_text_savedmodel):
    causal_lm, path, current = tiny_text_savedmodel
    requests = [{"signature": "serving_default", "inputs": {"prompt": PROMPTS, "max_new_tokens": 8}},
                {"signature": "score", "inputs": {"prompt": PROMPTS, "response": [" over", " dog"]}},
                {"signature": "embed", "inputs": {"prompt": PROMPTS}}]
    result = load_like_tf_serving(tf_2_20_python, path, requests)
    assert result["tensorflow"] == "2.20.0" and result["warmup_records"] == 12
    generated, scored, embedded = result["outputs"]
    assert generated["completion"] == in_process(causal_lm, PROMPTS, 8)
    np.testing.assert_allclose(scored["log_likelihood"],
                               current.score(prompt=PROMPTS, response=[" over", " dog"])["log_likelihood"], rtol=1e-5)
    np.testing.assert_allclose(embedded["embedding"], current.embed(prompt=PROMPTS)["embedding"], rtol=1e-5,
                               atol=1e-6)


def test_vision_export_with_xla_loads_and_generates_from_image_bytes_under_tf_2_20(tf_2_20_python,
                                                                                   tiny_vision_export):
    causal_lm, path = tiny_vision_export
    image = png(40, 30, 1)[0]
    requests = [{"signature": "serving_default", "inputs": {
        "prompt": PROMPTS, "images": [[{"b64": base64.b64encode(image).decode()}], [{"b64": ""}]],
        "max_new_tokens": 6}}]
    result = load_like_tf_serving(tf_2_20_python, path, requests)
    assert result["tensorflow"] == "2.20.0" and result["warmup_records"] == 8  # 2 batch sizes x 4
    expected = in_process(causal_lm, ["<start_of_image>" + PROMPTS[0], PROMPTS[1]], 6, images=[[image], []])
    assert result["outputs"][0]["completion"] == expected
