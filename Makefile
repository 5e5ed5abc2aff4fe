# The two commands the README opens with. Both install what they need first.
PY ?= python3
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-dev

install:
	$(PY) -m pip install -q $(TORCH) -e .

install-dev:
	$(PY) -m pip install -q $(TORCH) -e ".[dev,monailabel]"
	$(PY) -m pip install -q --no-deps taming-transformers-rom1504==0.0.6

demo: install
	monai-disc demo --out demo_out

test: install-dev
	$(PY) -m ruff check monai_disc tests bench
	$(PY) -m pytest -q tests
