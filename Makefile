# seer — the two commands a new user needs: `make run` and `make test` (then `make eval`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SAMPLES ?= runs/sample-images
LABELLED ?= runs/labelled
SHARDS ?= runs/shards
SHARD_ARGS ?=
FEED ?=
CONFIG ?= local
ARGS ?=
EVAL_ARGS ?=

.PHONY: venv test lint run seed seed-labelled seed-shards eval bench clean observe

venv: $(STAMP)

# Installs the project with its test extras, then swaps pillow for pillow-simd (SIMD resize and
# colour conversion: the multi-crop hot path). pillow-simd must come after torchvision, which pulls
# plain pillow in; when it cannot build, plain pillow goes back with a one-line warning.
# The two distributions share the PIL/ files, and matplotlib's `pillow` requirement makes every
# reinstall of the project put plain pillow back over pillow-simd's files. Uninstalling pillow
# then deletes those files while pillow-simd's metadata stays, so a plain `pip install
# pillow-simd` says "already satisfied" and leaves no PIL at all: hence --force-reinstall (which
# also repairs a venv left in that state), and --no-deps so that nothing else is reinstalled.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel pybind11
	$(PIP) install -q -e ".[test]"
	@if $(PY) -c "import PIL, sys; sys.exit(0 if '.post' in PIL.__version__ else 1)" 2>/dev/null; then \
		echo "pillow-simd already installed"; \
	else \
		$(PIP) uninstall -q -y pillow; \
		if CC="cc -mavx2" $(PIP) install -q --force-reinstall --no-deps --no-build-isolation \
				--no-cache-dir pillow-simd >$(VENV)/pillow-simd.log 2>&1; then \
			echo "pillow-simd installed"; \
		else \
			echo "WARNING: pillow-simd did not build (see $(VENV)/pillow-simd.log); using plain pillow"; \
			$(PIP) install -q pillow; \
		fi; \
	fi
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

seed: $(STAMP)
	@test -d $(SAMPLES) || $(VENV)/bin/seer seed --out $(SAMPLES)

seed-labelled: $(STAMP)
	@test -d $(LABELLED) || $(VENV)/bin/seer seed --labelled --out $(LABELLED)

# The sample images packed into WebDataset tars in SHARDS (SHARD_ARGS: more `seer seed --shards`
# options, e.g. "--format both --per-shard 100 --count 5000"); it prints the feed.uri to train on:
# make run FEED='runs/shards/{00000..00031}.tar'.
seed-shards: $(STAMP)
	@if test -d $(SHARDS); then \
		echo "$(SHARDS) exists (remove it to seed again); train on it: make run FEED='$(SHARDS)/*.tar'"; \
	else \
		$(VENV)/bin/seer seed --shards --out $(SHARDS) $(SHARD_ARGS); \
	fi

# FEED: train on that feed.uri (a folder, an s3:// prefix, a shard pattern or glob such as
# 'runs/shards/{00000..00031}.tar') instead of the sample images, which are then not seeded.
# Brace expansion is off, so ARGS="--set feed.uri=runs/shards/{00000..00031}.tar" also reaches
# seer as written.
run: $(STAMP) $(if $(FEED),,seed)
	set +B; $(VENV)/bin/seer pretrain --config $(CONFIG) $(if $(FEED),--set 'feed.uri=$(FEED)') $(ARGS)

# The newest checkpoint of CONFIG's run (written by `make run`) on the generated labelled set.
eval: $(STAMP) seed-labelled
	$(VENV)/bin/seer eval --config $(CONFIG) --data $(LABELLED) $(EVAL_ARGS)

# A local Prometheus (Debian's `prometheus` package) on 127.0.0.1 scraping a running `make run`
# (Ray's metrics export port 8080, the driver's status page 9100) and `make eval EVAL_ARGS=--watch`
# (9101), with seer's alert rules loaded. Runs until Ctrl-C; its data goes to runs/prometheus.
PROM_PORT ?= 9090
PROM_DATA ?= runs/prometheus
observe:
	@command -v prometheus >/dev/null || { echo "make observe needs Prometheus: apt-get install prometheus"; exit 1; }
	@mkdir -p $(PROM_DATA)
	@echo "Prometheus: http://127.0.0.1:$(PROM_PORT) (scraping make run on 127.0.0.1:8080 and :9100, seer eval on :9101)"
	@echo "Queries to paste into its Graph tab:"
	@echo '  sum(rate(ray_seer_train_images_total[1m]))                  images/s, all workers'
	@echo '  max(ray_seer_train_loss)                                    SwAV loss'
	@echo '  max(ray_seer_train_lr)                                      learning rate'
	@echo '  avg(rate(ray_seer_train_data_wait_seconds_sum[1m]))         data-wait share'
	@echo '  sum by (reason) (rate(ray_seer_ingest_failures_total[5m]))  ingest failures by reason'
	@echo '  time() - max(ray_seer_train_checkpoint_timestamp_seconds)   checkpoint age (s)'
	@echo '  seer_cli_step                                               the driver status page'
	@echo '  ALERTS                                                      seer alerts pending/firing'
	@echo "Alerts: http://127.0.0.1:$(PROM_PORT)/alerts   Dashboards for Grafana: deploy/grafana/*.json"
	exec prometheus --config.file=deploy/prometheus.yml --storage.tsdb.path=$(PROM_DATA) \
		--web.listen-address=127.0.0.1:$(PROM_PORT) --log.level=warn

bench: $(STAMP)
	$(PY) benchmarks/multicrop.py --floor
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
