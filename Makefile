# The two set-up commands of the README: `make demo` and `make test`; `make bench` runs the benchmarks.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo bench clean

$(STAMP): requirements.txt setup.py
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

# The suite runs with oneDNN on (tests/conftest.py: as TensorFlow has it on AVX-512 cloud CPUs); the model and
# export tests run again with it off, as on every other CPU: the tiny models only (the real 270M's ran in the
# first pass); not the export layout test (it checks files and op names, which oneDNN does not change), the LoRA
# exports (what they add, adapters merged into the serving kernels, is not numerics; 77 s), nor the XLA-only vision
# and int8 exports (XLA's CPU code does not call oneDNN; 2 min; the plain text and int8 exports stay).
MODEL_TESTS := tests/test_layers.py tests/test_backbone.py tests/test_keras_hub_parity.py tests/test_generation.py \
	tests/test_export.py tests/test_quantization.py

test: venv
	$(VENV)/bin/pytest
	TF_ENABLE_ONEDNN_OPTS=0 $(VENV)/bin/pytest -m "not slow" \
		-k "not test_tf_serving_layout and not test_lora_kept_apart and not test_vision_export_with_xla" $(MODEL_TESTS) \
		--deselect "tests/test_quantization.py::test_int8_export_answers_through_tf_servings_loader_like_the_in_process_int8_model[--jit_compile]"

# Everything but the real-weights and other slow tests.
test-fast: venv
	$(VENV)/bin/pytest -m "not slow"

demo: venv
	$(PYTHON) -m demo

# Every script in benchmarks/ once, full size (an hour or more on 2 cores), then benchmarks/REPORT.md and
# benchmarks/charts/; results and logs in benchmarks/results/.
bench: venv
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
