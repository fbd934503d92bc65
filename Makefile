# Every target creates the virtual environment when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: run test test-slow test-all bench ui clean report reproduce sync

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)            ## the default experiment into sqlite:///mlflow.db
	$(PY) -m fpdsl $(ARGS)

test: $(STAMP)           ## the default suite (slow tests deselected); pytest's 5 (no tests) is not a failure
	$(PY) -m pytest -q -m "not slow" $(ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-slow: $(STAMP)      ## the slow tests alone (a wheel in a fresh venv, a tracking server restarted, ...)
	$(PY) -m pytest -q -m slow $(ARGS); rc=$$?; [ $$rc -eq 5 ] && exit 0 || exit $$rc

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)          ## every speed claim measured side by side (JSON in benchmarks/results/); about 20 minutes
	$(PY) -m pip install -q evox==1.4.0   # EvoX beside fpdsl's engines (bench only; it builds on the installed torch)
	$(PY) benchmarks/bench.py $(ARGS)
	$(PY) benchmarks/bench_grid.py $(filter --quick,$(ARGS))
	$(PY) benchmarks/bench_batched.py $(filter --quick,$(ARGS))

ui: $(STAMP)             ## MLflow UI on the default store, http://127.0.0.1:5000 (one worker, no job runners)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 --workers 1

sync: $(STAMP)           ## send what runs' write-ahead logs still hold to the default store
	$(PY) -m fpdsl sync $(ARGS)

report: $(STAMP)         ## comparison report from the default store: reports/<time>/report.md (+ a summary run)
	$(PY) -m fpdsl.report $(ARGS)

# every seed experiment over SEEDS seeds, then the report (and the README's table); one sweep (parent run) per group
GROUPS := fprinciple highdim spectral_bias remove_bias condensation ntk
SEEDS ?= 5
LAUNCHER ?= joblib
reproduce: $(STAMP)      ## every seed experiment (conf/experiment/) over 5 seeds, then reports/reproduce/report.md and the README table
	for g in $(GROUPS); do \
	  $(PY) -m fpdsl -m hydra/launcher=$(LAUNCHER) "experiment=glob($${g}_*)" "seed=range($(SEEDS))" \
	    tracking.experiment=$$g hydra.sweep.dir=multirun/reproduce/$$g $(ARGS) || exit 1; \
	done
	$(PY) -m fpdsl.report $(foreach g,$(GROUPS),-e $(g)) --out reports/reproduce --readme README.md

clean:
	rm -rf outputs multirun .pytest_cache
