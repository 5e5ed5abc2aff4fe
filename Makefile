# The two commands the README opens with. Both install what they need first, from the committed lock.
PY ?= python3
# Every package pinned to the version `make lock` resolved; `make demo LOCK=` installs without it (your own torch).
LOCK ?= requirements/constraints.txt
PIP_INSTALL = $(PY) -m pip install -q $(if $(LOCK),-c $(LOCK))

.PHONY: demo test install install-dev lock

install:
	$(PIP_INSTALL) -e .

install-dev:
	$(PIP_INSTALL) -e ".[dev,monailabel]"
	$(PY) -m pip install -q --no-deps taming-transformers-rom1504==0.0.6

demo: install
	$(PY) -m monai_disc demo --out demo_out

test: install-dev
	$(PY) -m ruff check monai_disc tests bench
	$(PY) -m pytest -q --durations=15 tests

# Resolve the whole set (base, dev, monailabel) once with uv's resolver and write the lock every install reads.
lock:
	$(PY) -m pip install -q uv==0.13.10
	$(PY) -m uv pip compile setup.py requirements/lock.in --extra dev --extra monailabel \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" \
		-o requirements/constraints.txt
