# make run  : set up .venv, migrate, start web + worker on http://127.0.0.1:4000
# make test : set up .venv and run the whole suite
# make media: add the video, audio/3D and API templates' pictures to the gallery
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SCALE_ENV := COMFYHUB_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \
	COMFYHUB_REDIS_URL=redis://127.0.0.1:6379/0

.PHONY: install media run migrate test test-scale lint format clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,scale]"
	# Only ComfyUI-Manager's data files are read (node map, model list); --no-deps keeps
	# its heavy dependency tree (transformers, …) out of our venv.
	$(BIN)/python -m pip install --quiet --no-deps "comfyui-manager>=4.3,<5"
	touch $(STAMP)

install: $(STAMP)

media: install
	$(BIN)/python -m pip install --quiet -e ".[test,scale,media]"

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: migrate
	exec $(BIN)/python manage.py serve

test: install
	$(BIN)/python -m pytest

test-scale: install
	$(SCALE_ENV) $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
