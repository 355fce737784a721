# Developer entry points. On a fresh machine `make run` and `make test` set everything up first.
#   make run    build and install into .venv, then generate with the default model (SmolLM2-135M)
#   make test   build (with the C++ tests, llama-server and rpc-server) and install into .venv, then run every test
#   make cuda   the same install with the CUDA backend (-DGGML_CUDA=ON)
#   make server the install with llama-server (upstream's, with the --adamas-* flags): .venv/bin/llama-server
#   make rpc    the install with ggml's RPC backend and rpc-server (python -m adamas_gguf rpc-server)
#   V=1         show the build log (make install V=1)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROMPT ?= The capital of France is

# llama-cpp-python is installed Python-only: our build makes the one libllama it loads, so llama.cpp is
# compiled once. pip passes CMAKE_ARGS to every scikit-build-core build, ours included.
export CMAKE_ARGS := -DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF $(CMAKE_ARGS)
PIP := $(PY) -m pip --disable-pip-version-check
# The build log (upstream's many GCC warnings included) shows with `make install V=1`.
INSTALL := $(PIP) install $(if $(V),-v) --no-build-isolation -Ccmake.define.ADAMAS_BUILD_TESTS=ON

.PHONY: deps install cuda server rpc run test clean
all: install

$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "llama-cpp-python[server]==0.3.36" "scikit-build-core>=0.10" "cmake>=3.21" ninja "gguf>=0.10" "numpy>=1.20" "pytest>=7.4" "matplotlib>=3.5" "openai>=1.0"
	touch $@

deps: $(VENV)/.deps

install: deps
	$(INSTALL) .

cuda: deps
	$(INSTALL) -Ccmake.define.GGML_CUDA=ON .

# CMake keeps the option in the build tree: a later `make install` there still builds the server
server: deps
	$(INSTALL) -Ccmake.define.ADAMAS_BUILD_SERVER=ON .

# the same: ADAMAS_BUILD_RPC stays on in the build tree
rpc: deps
	$(INSTALL) -Ccmake.define.ADAMAS_BUILD_RPC=ON .

run: install
	$(PY) -m adamas_gguf run -p "$(PROMPT)" -n 32 --temp 0

# with llama-server and rpc-server, which tests/test_server.py and tests/test_rpc.py start, and an unpatched
# upstream rpc-server (the build tree only) that tests/test_rpc.py checks the client against
test: deps
	$(INSTALL) -Ccmake.define.ADAMAS_BUILD_SERVER=ON -Ccmake.define.ADAMAS_BUILD_RPC=ON \
		-Ccmake.define.ADAMAS_BUILD_UPSTREAM_RPC=ON .
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf build $(VENV)
