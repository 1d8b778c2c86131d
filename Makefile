# VPN pipeline: the user interface. Every target that reads or writes takes MANIFEST=, CACHE_DIR=, RUNS_DIR=.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

DATASET    ?= ntu60
PROTOCOL   ?=
DATA_ROOT  ?=
MANIFEST   ?= manifests/$(DATASET).csv
CACHE_DIR  ?= cache
RUNS_DIR   ?= runs
CACHE      ?=
I3D_WEIGHTS ?=
SHARD_SIZE ?= 200
WORKERS    ?= 1
SCHEDULER  ?=
CLIPS      ?= 1
VARIANT    ?= vpn
EPOCHS     ?= 30
RUN        ?=
INIT       ?=
GPUS       ?= 1
N          ?= 48
SEED       ?= 0
PYTEST_ARGS ?=
TRAIN_ARGS ?=

DEMO_N     ?= 96
DEMO_ROOT  ?= data/demo
DEMO_DIR   ?= data/demo-work
SHARED_WEIGHTS := ../shared/i3d/rgb_scratch.pt
DEMO_WEIGHTS ?= $(if $(I3D_WEIGHTS),$(I3D_WEIGHTS),$(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),))

need = $(if $($(1)),,$(error $(1)= is required: $(2)))
opt = $(if $($(1)),$(2) $($(1)),)

.PHONY: help setup test test-fast demo synthetic manifest cache resume luigid train-head eval ablate finetune bench report verify fuzz clean-demo

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

setup: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

test: setup  ## the full CPU test suite
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup  ## the suite without tests marked slow
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

synthetic: setup  ## write the synthetic NTU-format dataset: DATA_ROOT=dir [N=48] [SEED=0]
	$(call need,DATA_ROOT,the folder to write the synthetic dataset into)
	$(PY) -m pipeline.synthetic --root $(DATA_ROOT) --n $(N) --seed $(SEED)

manifest: setup  ## DATASET=ntu60|ntu120|smarthome|nucla DATA_ROOT=dir [MANIFEST=csv]
	$(call need,DATA_ROOT,the dataset folder to scan)
	$(PY) -m pipeline.manifest --dataset $(DATASET) --data-root $(DATA_ROOT) --out $(MANIFEST) $(if $(VALIDATE),--validate,) $(call opt,MISSING_LIST,--missing-list)

cache: setup  ## build (or resume) the HDF5 caches of MANIFEST under CACHE_DIR
	$(PY) -m tasks.cache $(call opt,DATA_ROOT,--data-root) --dataset $(DATASET) --manifest $(MANIFEST) --cache-dir $(CACHE_DIR) --shard-size $(SHARD_SIZE) --workers $(WORKERS) --clips-per-video $(CLIPS) $(call opt,PROTOCOL,--protocol) $(call opt,SCHEDULER,--scheduler) $(call opt,I3D_WEIGHTS,--i3d-weights) $(if $(RETRY_FAILED),--retry-failed,)

resume: setup  ## print done/remaining shards of a cache run, then continue it
	$(PY) -m tasks.cache --resume $(call opt,DATA_ROOT,--data-root) --dataset $(DATASET) --manifest $(MANIFEST) --cache-dir $(CACHE_DIR) --shard-size $(SHARD_SIZE) --workers $(WORKERS) --clips-per-video $(CLIPS) $(call opt,PROTOCOL,--protocol) $(call opt,SCHEDULER,--scheduler) $(call opt,I3D_WEIGHTS,--i3d-weights) $(if $(RETRY_FAILED),--retry-failed,)

luigid: setup  ## start Luigi's central scheduler (PORT=8082)
	mkdir -p $(CACHE_DIR)/luigid
	$(VENV)/bin/luigid --port $(or $(PORT),8082) --logdir $(CACHE_DIR)/luigid --state-path $(CACHE_DIR)/luigid/state.pickle

train-head: setup  ## DATASET= PROTOCOL= [VARIANT=vpn] [EPOCHS=30] [RUN=name] [CACHE=dir]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(PY) -m vpn_head.train --dataset $(DATASET) --protocol $(PROTOCOL) --variant $(VARIANT) --epochs $(EPOCHS) --cache $(or $(CACHE),$(CACHE_DIR)) --runs-dir $(RUNS_DIR) $(call opt,RUN,--run) $(TRAIN_ARGS)

eval: setup  ## evaluate a run: RUN=name (or DATASET= PROTOCOL= [VARIANT=]) [SPLIT=test]
	$(PY) -m vpn_head.evaluate --runs-dir $(RUNS_DIR) $(call opt,RUN,--run) --dataset $(DATASET) $(call opt,PROTOCOL,--protocol) --variant $(VARIANT) --split $(or $(SPLIT),test) $(call opt,CACHE,--cache)

ablate: setup  ## train + evaluate the paper's ablations: DATASET= PROTOCOL= [EPOCHS=]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(PY) -m vpn_head.ablate --dataset $(DATASET) --protocol $(PROTOCOL) --epochs $(EPOCHS) --cache $(or $(CACHE),$(CACHE_DIR)) --runs-dir $(RUNS_DIR) $(TRAIN_ARGS)

finetune: setup  ## end-to-end fine-tune: DATASET= PROTOCOL= [INIT=runs/<head run>] [GPUS=n] [EPOCHS=]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(if $(filter-out 1,$(GPUS)),$(VENV)/bin/torchrun --standalone --nproc_per_node $(GPUS),$(PY)) -m vpn_head.finetune --dataset $(DATASET) --protocol $(PROTOCOL) --epochs $(EPOCHS) --manifest $(MANIFEST) --cache-dir $(or $(CACHE),$(CACHE_DIR)) --runs-dir $(RUNS_DIR) $(call opt,INIT,--init) $(call opt,RUN,--run-name) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,DATA_ROOT,--data-root) $(TRAIN_ARGS)

bench: setup  ## benchmarks (JSON under bench/results/)
	$(PY) -m bench.run_all --out-dir bench/results $(call opt,I3D_WEIGHTS,--i3d-weights) $(if $(ONLY),--only $(ONLY),)

report: setup  ## figures for a run: RUN=name
	$(call need,RUN,the run to draw)
	$(PY) -m vpn_head.report --runs-dir $(RUNS_DIR) --run $(RUN) $(call opt,CACHE,--cache) $(call opt,DATA_ROOT,--data-root) $(call opt,SAMPLES,--samples) $(call opt,SPLIT,--split) $(if $(filter command line environment,$(origin MANIFEST)),--manifest $(MANIFEST),)

demo: setup  ## synthetic data -> manifest -> cache -> train i3d and vpn heads -> evaluate, in minutes on CPU
	$(PY) -m pipeline.synthetic --root $(DEMO_ROOT) --n $(DEMO_N) --seed $(SEED) --cameras-per-take 1 --hand-amplitude 0.2 --overwrite
	$(PY) -m pipeline.manifest --dataset ntu60 --data-root $(DEMO_ROOT) --out $(DEMO_DIR)/manifest.csv
	$(PY) -m tasks.cache --dataset ntu60 --protocol cs --manifest $(DEMO_DIR)/manifest.csv --cache-dir $(DEMO_DIR)/cache --shard-size 32 --workers 1 $(if $(DEMO_WEIGHTS),--i3d-weights $(DEMO_WEIGHTS),)
	$(PY) -m vpn_head.demo --cache-dir $(DEMO_DIR)/cache --runs-dir $(DEMO_DIR)/runs --epochs $(or $(DEMO_EPOCHS),30)

# --- trusting the cache (issue 10): verify a cache, retry recorded failures, fuzz the readers
RETRY_FAILED ?=
FUZZ_REPORT ?= bench/results/fuzz.json

verify: setup  ## full check of a cache without rebuilding: [CACHE=folder|root] (default CACHE_DIR); exit 1 names bad files
	$(PY) -m pipeline.cache verify $(or $(CACHE),$(CACHE_DIR))

fuzz: setup  ## fuzz the 4 skeleton readers with mutated real samples: [N=2500] cases per reader
	mkdir -p $(dir $(FUZZ_REPORT))
	FUZZ_EXAMPLES=$(if $(filter command line,$(origin N)),$(N),2500) FUZZ_REPORT=$(FUZZ_REPORT) $(PY) -m pytest -q -s -p no:cacheprovider -m fuzz tests/test_fuzz.py

clean-demo:  ## remove the demo's data
	rm -rf $(DEMO_ROOT) $(DEMO_DIR)
