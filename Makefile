# losswatch developer commands. `make serve` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp-install
HOST    ?= 127.0.0.1
PORT    ?= 8000

.PHONY: serve test bench demo venv assets browser lint clean

serve: $(STAMP) assets
	$(BIN)/losswatch serve --host $(HOST) --port $(PORT)

# Everything the tests need is installed here: the virtualenv, the chart library, Chromium.
test: $(STAMP) assets browser
	$(BIN)/ruff check .
	$(BIN)/pytest -q

bench: $(STAMP) assets browser
	$(BIN)/python bench/run.py

demo: $(STAMP)
	$(BIN)/losswatch demo

venv: $(STAMP)

# torch first, pinned: a bare `torch` requirement resolved alone can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[server,postgres,torch,dev]"
	touch $(STAMP)

# The chart library and Swagger UI (for /docs) come from the npm registry at the versions pinned in
# dashboard/package-lock.json.
assets: dashboard/static/vendor/.stamp
dashboard/static/vendor/.stamp: dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --silent
	mkdir -p dashboard/static/vendor
	cp dashboard/node_modules/uplot/dist/uPlot.iife.min.js dashboard/node_modules/uplot/dist/uPlot.min.css dashboard/static/vendor/
	mkdir -p dashboard/static/vendor/swagger-ui
	cp dashboard/node_modules/swagger-ui-dist/swagger-ui-bundle.js dashboard/node_modules/swagger-ui-dist/swagger-ui.css \
	   dashboard/node_modules/swagger-ui-dist/oauth2-redirect.js \
	   dashboard/node_modules/swagger-ui-dist/LICENSE dashboard/static/vendor/swagger-ui/
	touch $@

# Debian's Chromium for the browser tests (Playwright drives it through executable_path).
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v docker-compose >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy client server pkg

clean:
	rm -rf $(VENV) dashboard/node_modules dashboard/static/vendor

# The Ultralytics YOLO integration test runs in its own virtualenv: ultralytics needs torchvision, and
# PyPI's torchvision does not import beside the main venv's torch 2.13.0. torch 2.14.1 + torchvision
# 0.29.1 (a CUDA build that also runs on CPU) first, pinned, then ultralytics and the client (no extras:
# the test's training script only needs the client; the server runs from the main venv).
ULTRA_VENV  := .venv-ultralytics
ULTRA_STAMP := $(ULTRA_VENV)/.stamp-install

.PHONY: venv-ultralytics
venv-ultralytics: $(ULTRA_STAMP)
test: $(ULTRA_STAMP)

$(ULTRA_STAMP): pyproject.toml
	test -x $(ULTRA_VENV)/bin/python || $(PY) -m venv $(ULTRA_VENV)
	$(ULTRA_VENV)/bin/pip install -q --upgrade pip
	$(ULTRA_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(ULTRA_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190 -e .
	touch $@
