# VPN pipeline: the user interface. Every target that reads or writes takes MANIFEST=, CACHE_DIR=, RUNS_DIR=.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       := .venv
PY          = $(call q,$(VENV)/bin/python)
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
PORT       ?= 8082

DEMO_N     ?= 96
DEMO_ROOT  ?= data/demo
DEMO_DIR   ?= data/demo-work
SHARED_WEIGHTS := ../shared/i3d/rgb_scratch.pt
DEMO_WEIGHTS ?= $(if $(I3D_WEIGHTS),$(I3D_WEIGHTS),$(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),))

# No make variable reaches the shell unquoted: $(call q,text) is text as one single-quoted shell word (a ' inside
# becomes '\''), so spaces, ;, backticks and $(...) in a value are data; *_ARGS pass-throughs are split on
# spaces and each word is quoted ($(call args,VAR)).
q = '$(subst ','\'',$(1))'
args = $(foreach a,$($(1)),$(call q,$(a)))
need = $(if $($(1)),,$(error $(1)= is required: $(2)))
opt = $(if $($(1)),$(2) $(call q,$($(1))),)

.PHONY: help setup test test-fast demo fidelity synthetic manifest cache resume luigid train-head eval ablate finetune bench report verify fuzz clean-demo inspect export-pyskl

help:  ## list the targets, each with its variables and their defaults
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14 | while IFS= read -r line; do \
	  echo "$$line"; target=$${line%% *}; case " $(VARS_TARGETS) " in *" $$target "*) ;; *) continue;; esac; \
	  $(MAKE) --no-print-directory -s help-vars-$$target; done

$(STAMP): requirements.txt
	@test -x $(PY) || $(call q,$(PYTHON_SYS)) -m venv $(call q,$(VENV))
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(call q,$@)

setup: $(STAMP)  ## create .venv and install the pinned dependencies (idempotent)

test: setup  ## the full CPU test suite
	$(PY) -m pytest -q $(call args,PYTEST_ARGS)

test-fast: setup  ## the suite without tests marked slow
	$(PY) -m pytest -q -m "not slow" $(call args,PYTEST_ARGS)

synthetic: setup  ## write the synthetic NTU-format dataset: DATA_ROOT=dir [N=48] [SEED=0] [SYNTHETIC_ARGS=…]
	$(call need,DATA_ROOT,the folder to write the synthetic dataset into)
	$(PY) -m pipeline.synthetic.dataset $(call opt,DATA_ROOT,--root) $(call opt,N,--n) $(call opt,SEED,--seed) $(call args,SYNTHETIC_ARGS)

manifest: setup  ## DATASET=ntu60|ntu120|smarthome|nucla DATA_ROOT=dir [MANIFEST=csv] [POSES=pyskl.pkl]
	$(call need,DATA_ROOT,the dataset folder to scan)
	$(PY) -m pipeline.datasets.manifest $(call opt,DATASET,--dataset) $(call opt,DATA_ROOT,--data-root) $(call opt,MANIFEST,--out) $(call flag,VALIDATE,--validate) $(call opt,MISSING_LIST,--missing-list) $(call given_opt,WORKERS,--workers) $(call opt,POSES,--poses) $(call args,MANIFEST_ARGS)

cache: setup  ## build (or resume) the HDF5 caches of MANIFEST under CACHE_DIR [PIXELS=auto|store|source: the crop store when present]
	$(PY) -m tasks.cache $(call opt,DATA_ROOT,--data-root) $(call opt,DATASET,--dataset) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_DIR,--cache-dir) $(CACHE_OPTS)

resume: setup  ## print done/remaining shards of a cache run, then continue it
	$(PY) -m tasks.cache --resume $(call opt,DATA_ROOT,--data-root) $(call opt,DATASET,--dataset) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_DIR,--cache-dir) $(CACHE_OPTS)

luigid: setup  ## Luigi's central scheduler on LUIGID_ADDRESS:PORT (127.0.0.1:8082); state in a private LUIGID_DIR
	$(PY) -m tasks.luigid $(call opt,LUIGID_ADDRESS,--address) $(call opt,PORT,--port) $(call opt,LUIGID_DIR,--state-dir)

train-head: setup  ## DATASET= PROTOCOL= [VARIANT=vpn] [EPOCHS=30] [READING=paper|official] [RUN=name] [CACHE=dir] [CONFIG=runs/<name>/config.json]
	$(if $(CONFIG),,$(call need,PROTOCOL,the evaluation protocol (e.g. cs)))
	$(PY) -m vpn_head.train.head $(call opt,CONFIG,--config) $(call dflt,DATASET,--dataset) $(call dflt,PROTOCOL,--protocol) $(call dflt,VARIANT,--variant) $(call dflt,EPOCHS,--epochs) $(call dflt,CACHE_ROOT,--cache-dir,CACHE CACHE_DIR) $(call dflt,RUNS_DIR,--runs-dir) $(call opt,RUN,--run) $(HEAD_OPTS) $(call bool,COUPLER,coupler) $(call opt,POSE_BACKBONE,--pose-backbone) $(call opt,EMBEDDING_LOSS,--embedding-loss) $(call flag,FORCE_NEW,--force-new) $(call args,TRAIN_ARGS)

eval: setup  ## evaluate a run (+ pose-shuffle and attention diagnostics): RUN=name (or DATASET= PROTOCOL= [VARIANT=]) [SPLIT=test] [SHUFFLE_POSES=1]
	$(PY) -m vpn_head.eval.evaluate $(call opt,RUNS_DIR,--runs-dir) $(call opt,RUN,--run) $(call opt,RUN_DIR,--run-dir) $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,VARIANT,--variant) --split $(call q,$(or $(SPLIT),test)) $(call opt,CACHE,--cache-dir) $(call opt,CHECKPOINT,--checkpoint) $(call opt,OUT,--out) $(call opt,BATCH_SIZE,--batch-size) $(call opt,NUM_WORKERS,--num-workers) $(call opt,DEVICE,--device) $(call flag,PROBABILITIES,--probabilities) $(call flag,SHUFFLE_POSES,--shuffle-poses) $(call given_opt,MANIFEST,--manifest) $(call opt,DATA_ROOT,--data-root) $(call args,EVAL_ARGS)

ablate: setup  ## train + evaluate the paper's ablations: DATASET= PROTOCOL= [EPOCHS=]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(PY) -m vpn_head.experiments.ablate $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,EPOCHS,--epochs) $(call opt,CACHE_ROOT,--cache-dir) $(call opt,RUNS_DIR,--runs-dir) $(HEAD_OPTS) $(call opt,TABLES,--tables) $(call opt,PREFIX,--prefix) $(call opt,TEST_SPLIT,--test-split) $(call args,TRAIN_ARGS)

finetune: setup  ## end-to-end fine-tune: DATASET= PROTOCOL= [INIT=runs/<head run>] [GPUS=n] [NNODES=n RDZV=host:port] [CONFIG=…]
	$(if $(CONFIG),,$(call need,PROTOCOL,the evaluation protocol (e.g. cs)))
	$(LAUNCH) -m vpn_head.train.finetune $(call opt,CONFIG,--config) $(call dflt,DATASET,--dataset) $(call dflt,PROTOCOL,--protocol) $(call dflt,EPOCHS,--epochs) $(call dflt,MANIFEST,--manifest) $(call dflt,CACHE_ROOT,--cache-dir,CACHE CACHE_DIR) $(call dflt,RUNS_DIR,--runs-dir) $(call opt,INIT,--init) $(call opt,RUN,--run-name) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,DATA_ROOT,--data-root) $(FINETUNE_OPTS) $(call args,TRAIN_ARGS)

bench: setup  ## benchmarks (JSON under bench/results/)
	$(PY) -m bench.run_all --out-dir bench/results $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,ONLY,--only)

report: setup  ## figures for a run: RUN=name
	$(call need,RUN,the run to draw)
	$(PY) -m vpn_head.report.run_report $(call opt,RUNS_DIR,--runs-dir) $(call opt,RUN,--run) $(call opt,CACHE,--cache-dir) $(call opt,DATA_ROOT,--data-root) $(call opt,SAMPLES,--samples) $(call opt,SPLIT,--split) $(call opt,CHECKPOINT,--checkpoint) $(call given_opt,MANIFEST,--manifest) $(call opt,TSNE_CLIPS,--tsne-clips)

demo: setup  ## synthetic data -> manifest -> cache -> i3d, attention, vpn heads + oracle -> the fidelity columns, minutes on CPU
	$(PY) -m pipeline.synthetic.dataset $(call opt,DEMO_ROOT,--root) $(call opt,DEMO_N,--n) $(call opt,SEED,--seed) --cameras-per-take 1 --hand-amplitude 0.2 --active-hand random --passive-hand-amplitude 0.2 --overwrite
	$(PY) -m pipeline.datasets.manifest --dataset ntu60 $(call opt,DEMO_ROOT,--data-root) --out $(call q,$(DEMO_DIR)/manifest.csv)
	$(PY) -m tasks.cache --dataset ntu60 --protocol cs --manifest $(call q,$(DEMO_DIR)/manifest.csv) --cache-dir $(call q,$(DEMO_DIR)/cache) --shard-size 32 --workers 1 $(call opt,DEMO_WEIGHTS,--i3d-weights)
	$(PY) -m pipeline.crops.joints --cache-dir $(call q,$(DEMO_DIR)/cache) --dataset ntu60 --manifest $(call q,$(DEMO_DIR)/manifest.csv)
	$(PY) -m vpn_head.experiments.demo --cache-dir $(call q,$(DEMO_DIR)/cache) --runs-dir $(call q,$(DEMO_DIR)/runs) --manifest $(call q,$(DEMO_DIR)/manifest.csv) --epochs $(call q,$(or $(DEMO_EPOCHS),30)) $(call opt,READING,--reading)

fidelity: setup  ## does VPN beat I3D? synthetic data made for it, 5 seeds of i3d/attention/vpn + oracle [FID_N=240] [SEEDS="0 1 2 3 4"] [READING=paper|official] [FID_ARGS=]
	$(PY) -m vpn_head.experiments.fidelity --work $(call q,$(FID_WORK)) --n $(call q,$(or $(FID_N),240)) --prepare-only $(call args,FID_ARGS)
	$(PY) -m tasks.cache --dataset ntu60 --protocol cs --manifest $(call q,$(FID_WORK)/manifest.csv) --cache-dir $(call q,$(FID_WORK)/cache) --shard-size 40 --workers 1 $(call opt,DEMO_WEIGHTS,--i3d-weights)
	$(PY) -m pipeline.crops.joints --cache-dir $(call q,$(FID_WORK)/cache) --dataset ntu60 --manifest $(call q,$(FID_WORK)/manifest.csv)
	$(PY) -m vpn_head.experiments.fidelity --work $(call q,$(FID_WORK)) --n $(call q,$(or $(FID_N),240)) --seeds $(foreach s,$(or $(SEEDS),0 1 2 3 4),$(call q,$(s))) $(call opt,EPOCHS,--epochs) $(call opt,READING,--reading) --out bench/results/fidelity.json $(call args,FID_ARGS)

# ---------------------------------------------------------------------------------------------------------
# Every CLI option as a make variable (the CLI's name in upper case), pass-throughs, and the check that a
# variable given on the command line is one the goal takes. VARS_<target> lists a target's variables; a goal
# without such a list is not checked. help-defaults.tsv holds the default `make help` shows where the CLI
# decides it.

HELP_DEFAULTS := help-defaults.tsv
# VAR=value lines in, one "VAR=default ..." line out: a default of help-defaults.tsv (<target>_VAR, else VAR)
# replaces the Makefile's value
HELP_AWK = FNR == NR { if ($$0 !~ /^\#/) doc[$$1] = $$2; next } \
  { v = substr($$0, 1, index($$0, "=") - 1); val = substr($$0, index($$0, "=") + 1); \
    if ((t "_" v) in doc) val = doc[t "_" v]; else if (v in doc) val = doc[v]; \
    printf "%s%s=%s", sep, v, val; sep = " " } END { print "" }

NNODES     ?= 1
RDZV       ?=
RDZV_ID    ?=
CACHE_ROOT  = $(or $(CACHE),$(CACHE_DIR))
FID_WORK    = $(or $(FID_DIR),data/fidelity)

given = $(filter command environment,$(firstword $(origin $(1))))
given_opt = $(if $(call given,$(1)),$(2) $(call q,$($(1))),)
# $(call dflt,VAR,--opt[,VARS]): VAR's value, default included; under CONFIG= (replaying a recorded run) only
# when VAR (or one of VARS) was given, so the file decides the rest
dflt = $(if $(or $(if $(CONFIG),,1),$(strip $(foreach v,$(or $(3),$(1)),$(call given,$(v))))),$(call opt,$(1),$(2)),)
flag = $(if $(filter 1 yes true,$($(1))),$(2),)
noflag = $(if $(filter 0 no false,$($(1))),$(2),)
bool = $(if $(filter 1 yes true,$($(1))),--$(2),$(if $(filter 0 no false,$($(1))),--no-$(2),))
each = $(foreach v,$($(1)),$(2) $(call q,$(v)))

CACHE_OPTS = $(call opt,SHARD_SIZE,--shard-size) $(call opt,WORKERS,--workers) --clips-per-video $(call q,$(or $(CLIPS_PER_VIDEO),$(CLIPS))) $(call opt,PROTOCOL,--protocol) $(call opt,SCHEDULER,--scheduler) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,T_P,--t-p) $(call opt,CROP_PAD,--crop-pad) $(call opt,CLIP_LEN,--clip-len) $(call opt,CROP_SIZE,--crop-size) $(call opt,BACKEND,--backend) $(call opt,PRECISION,--precision) $(call opt,COMPRESSION,--compression) $(call opt,EXTRACTOR,--extractor) $(call opt,PIXELS,--pixels) $(call opt,CROPS_ROOT,--crops-root) $(call opt,DECODE_WORKERS,--decode-workers) $(call opt,BATCH_SIZE,--batch-size) $(call opt,DEVICE,--device) $(call flag,RETRY_FAILED,--retry-failed) $(call flag,REBUILD_CHANGED,--rebuild-changed) $(call args,CACHE_ARGS)
COMMON_TRAIN_OPTS = $(call each,MODEL,--model) $(call opt,READING,--reading) $(call opt,BATCH_SIZE,--batch-size) $(call opt,LR,--lr) $(call opt,MOMENTUM,--momentum) $(call opt,WEIGHT_DECAY,--weight-decay) $(call opt,LR_STEP,--lr-step) $(call opt,LR_GAMMA,--lr-gamma) $(call opt,EVAL_SPLIT,--eval-split) $(call opt,VAL_FRACTION,--val-fraction) $(call given_opt,SEED,--seed) $(call noflag,DETERMINISTIC,--no-deterministic) $(call opt,NUM_WORKERS,--num-workers) $(call bool,AMP,amp) $(call opt,DEVICE,--device)
HEAD_OPTS = $(COMMON_TRAIN_OPTS) $(call flag,IN_MEMORY,--in-memory) $(call opt,POSE_LR_SCALE,--pose-lr-scale) $(call opt,OPTIMIZER,--optimizer)
FINETUNE_OPTS = $(COMMON_TRAIN_OPTS) $(call opt,PER_GPU_BATCH,--per-gpu-batch) $(call opt,FREEZE_UNTIL,--freeze-until) $(call flag,FROZEN_BN,--frozen-bn) $(call opt,CLIP_LEN,--clip-len) $(call opt,CROP_SIZE,--crop-size) $(call opt,FLIP_PROB,--flip-prob) $(call noflag,TEMPORAL_JITTER,--no-temporal-jitter) $(call opt,BOX_SCALE,--box-scale) $(call opt,BOX_SHIFT,--box-shift) $(call given_opt,VARIANT,--variant) $(call opt,EVAL_CLIPS,--eval-clips) $(call opt,EVAL_CROP_SIZE,--eval-crop-size) $(call flag,FORCE_NEW,--force-new) $(call flag,EVAL_ONLY,--eval-only) $(call opt,SPLIT,--split) $(call opt,CHECKPOINT,--checkpoint)
# one process, torchrun on one machine (GPUS=n), or torchrun on NNODES machines meeting at RDZV=host:port
MULTINODE = $(filter-out 1,$(NNODES))
LAUNCH = $(if $(MULTINODE),$(if $(RDZV),,$(error RDZV=host:port is required with NNODES=$(NNODES): the rendezvous endpoint every node reaches)))$(if $(or $(filter-out 1,$(GPUS)),$(MULTINODE)),$(call q,$(VENV)/bin/torchrun) $(if $(MULTINODE),$(call opt,NNODES,--nnodes) --rdzv-backend c10d $(call opt,RDZV,--rdzv-endpoint) $(call opt,RDZV_ID,--rdzv-id),--standalone) $(call opt,GPUS,--nproc_per_node),$(PY))

COMMON_VARS := PYTHON_SYS
CACHE_VARS := DATASET PROTOCOL DATA_ROOT MANIFEST CACHE_DIR SHARD_SIZE WORKERS SCHEDULER CLIPS CLIPS_PER_VIDEO I3D_WEIGHTS T_P CROP_PAD CLIP_LEN CROP_SIZE BACKEND PRECISION COMPRESSION EXTRACTOR PIXELS CROPS_ROOT DECODE_WORKERS BATCH_SIZE DEVICE RETRY_FAILED REBUILD_CHANGED CACHE_ARGS
TRAIN_VARS := MODEL READING BATCH_SIZE LR MOMENTUM WEIGHT_DECAY LR_STEP LR_GAMMA EVAL_SPLIT VAL_FRACTION SEED DETERMINISTIC NUM_WORKERS AMP DEVICE TRAIN_ARGS
VARS_setup :=
VARS_test := PYTEST_ARGS
VARS_test-fast := PYTEST_ARGS
VARS_synthetic := DATA_ROOT N SEED SYNTHETIC_ARGS
VARS_manifest := DATASET DATA_ROOT MANIFEST VALIDATE MISSING_LIST WORKERS POSES MANIFEST_ARGS
VARS_cache := $(CACHE_VARS)
VARS_resume := $(CACHE_VARS)
VARS_luigid := PORT LUIGID_ADDRESS LUIGID_DIR
VARS_train-head := CONFIG DATASET PROTOCOL VARIANT EPOCHS RUN CACHE CACHE_DIR RUNS_DIR $(TRAIN_VARS) IN_MEMORY POSE_LR_SCALE OPTIMIZER POSE_BACKBONE COUPLER EMBEDDING_LOSS FORCE_NEW
VARS_eval := RUN RUN_DIR DATASET PROTOCOL VARIANT SPLIT CACHE RUNS_DIR CHECKPOINT OUT BATCH_SIZE NUM_WORKERS DEVICE PROBABILITIES SHUFFLE_POSES MANIFEST DATA_ROOT EVAL_ARGS
VARS_ablate := DATASET PROTOCOL EPOCHS CACHE CACHE_DIR RUNS_DIR $(TRAIN_VARS) IN_MEMORY POSE_LR_SCALE OPTIMIZER TABLES PREFIX TEST_SPLIT
VARS_finetune := CONFIG DATASET PROTOCOL EPOCHS MANIFEST DATA_ROOT CACHE CACHE_DIR RUNS_DIR RUN INIT I3D_WEIGHTS GPUS NNODES RDZV RDZV_ID $(TRAIN_VARS) PER_GPU_BATCH FREEZE_UNTIL FROZEN_BN CLIP_LEN CROP_SIZE FLIP_PROB TEMPORAL_JITTER BOX_SCALE BOX_SHIFT VARIANT EVAL_CLIPS EVAL_CROP_SIZE FORCE_NEW EVAL_ONLY SPLIT CHECKPOINT
VARS_bench := I3D_WEIGHTS ONLY
VARS_report := RUN RUNS_DIR CACHE MANIFEST DATA_ROOT SAMPLES SPLIT CHECKPOINT TSNE_CLIPS
VARS_demo := DEMO_N DEMO_ROOT DEMO_DIR DEMO_EPOCHS SEED READING I3D_WEIGHTS
VARS_fidelity := FID_DIR FID_N SEEDS EPOCHS READING I3D_WEIGHTS FID_ARGS
VARS_inspect := CACHE CACHE_DIR DATASET
VARS_verify := CACHE CACHE_DIR
VARS_fuzz := N
VARS_export-pyskl := MANIFEST DATASET OUT CACHE DATA_ROOT WORKERS
VARS_clean-demo := DEMO_ROOT DEMO_DIR


# --- comparing runs (issue 20)
.PHONY: runs
VARS_runs := RUNS_DIR RUNS_FORMAT
runs: setup  ## compare the runs under RUNS_DIR: kind, variant, epochs, best val, test, pose-shuffle drop, config [RUNS_FORMAT=markdown]
	$(PY) -m vpn_head.report.runs_table --runs-dir $(RUNS_DIR) $(call opt,RUNS_FORMAT,--format)

# --- the person-crop store (issues 19, 28): the first stage after the manifest; make cache and make finetune read it
# [PIXELS=auto|store|source]
.PHONY: crops
crops: setup  ## cut the manifest's person-crop store (no cache needed): DATASET= [MANIFEST=] [CACHE_DIR=cache] [STORE_SIZE=256] [CROP_PAD=0.15] [MARGIN_SCALE=0.1] [MARGIN_SHIFT=0.1] [CRF=18] [PRESET=veryfast] [TUNE=fastdecode] [SHARD_SIZE=200] [WORKERS=n]
	$(PY) -m tasks.crops $(call opt,DATASET,--dataset) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_ROOT,--cache-dir) $(call opt,DATA_ROOT,--data-root) $(call opt,SHARD_SIZE,--shard-size) $(call opt,WORKERS,--workers) $(call opt,CROP_PAD,--crop-pad) $(call opt,BACKEND,--backend) $(call opt,STORE_SIZE,--store-size) $(call opt,MARGIN_SCALE,--margin-scale) $(call opt,MARGIN_SHIFT,--margin-shift) $(call opt,CRF,--crf) $(call opt,PRESET,--preset) $(call opt,TUNE,--tune) $(call args,CROPS_ARGS)
VARS_crops := DATASET MANIFEST DATA_ROOT CACHE CACHE_DIR SHARD_SIZE WORKERS CROP_PAD BACKEND STORE_SIZE MARGIN_SCALE MARGIN_SHIFT CRF PRESET TUNE CROPS_ARGS
FINETUNE_OPTS += $(call opt,PIXELS,--pixels)
VARS_finetune += PIXELS

VARS_probe := DATASET PROTOCOL CACHE CACHE_DIR RUNS_DIR SEED EVAL_SPLIT
VARS_joints := DATASET CACHE CACHE_DIR MANIFEST DATA_ROOT
VARS_two-stage := DATASET PROTOCOL DATA_ROOT MANIFEST CACHE_DIR RUNS_DIR CLIP_LEN CROP_SIZE FT_EPOCHS EPOCHS VARIANT TS_RUN TS_CACHE I3D_WEIGHTS PER_GPU_BATCH GPUS MODEL READING TRAIN_ARGS
VARS_TARGETS := $(patsubst VARS_%,%,$(filter VARS_%,$(.VARIABLES)))
CMDLINE_VARS := $(foreach v,$(.VARIABLES),$(if $(filter command,$(firstword $(origin $(v)))),$(v)))
ifeq ($(filter-out $(VARS_TARGETS),$(MAKECMDGOALS)),)
UNUSED_VARS := $(filter-out $(COMMON_VARS) $(foreach g,$(MAKECMDGOALS),$(VARS_$(g))),$(CMDLINE_VARS))
$(if $(UNUSED_VARS),$(warning warning: make $(or $(MAKECMDGOALS),help) does not use $(UNUSED_VARS): ignored (`make help` lists each target's variables)))
endif

help-vars-%:
	@$(if $(VARS_$*),printf '%s\n' $(foreach v,$(VARS_$*),$(call q,$(v)=$(strip $($(v))))) | awk -F'\t' -v t=$(call q,$*) '$(HELP_AWK)' $(HELP_DEFAULTS) - | fold -s -w 104 | sed 's/^/                /',:)

inspect: setup  ## a cache's config, provenance, counts per split and class, failures, shapes: CACHE=dir|cache.h5
	$(PY) -m pipeline.tools.inspect_cache $(call q,$(or $(CACHE),$(CACHE_DIR)/$(DATASET)))

export-pyskl: setup  ## MANIFEST's poses as a pyskl/mmaction2 annotation pickle: OUT=x.pkl [CACHE=dir]
	$(call need,OUT,the pickle to write)
	$(PY) -m pipeline.tools.export_pyskl $(call opt,MANIFEST,--manifest) $(call opt,OUT,--out) $(call opt,CACHE,--cache-dir) $(call opt,DATA_ROOT,--data-root) $(call given_opt,WORKERS,--workers)

# the head recipe's yardstick and the joint-anchored attention's input (issue 18)
.PHONY: probe joints
probe: setup  ## linear probe (logistic regression on pooled, standardised features; C chosen on val/val_carved): DATASET= PROTOCOL= [CACHE=…] [SEED=0]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(PY) -m vpn_head.eval.probe $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,CACHE_ROOT,--cache-dir) $(call opt,RUNS_DIR,--runs-dir) $(call opt,SEED,--seed) $(call opt,EVAL_SPLIT,--eval-split)

joints: setup  ## write a cache's crop joints (for MODEL="spatial_attention=joints"): [CACHE=dir] MANIFEST=csv [DATA_ROOT=…]
	$(PY) -m pipeline.crops.joints $(call opt,CACHE_ROOT,--cache-dir) $(call opt,DATASET,--dataset) $(call opt,MANIFEST,--manifest) $(call opt,DATA_ROOT,--data-root)

# the paper's two-stage path (section 3.3), each source video decoded once (issue 28): cut the person-crop store
# (make crops), cache the features the fine-tune reads its boxes and poses from (from the store), fine-tune I3D end
# to end (from the store), cache the fine-tuned I3D's Mixed_5c features into their own cache root (from the store),
# train and evaluate the head on them. Steps already done are skipped (Luigi). On a CPU use CLIP_LEN=32
# CROP_SIZE=112 (and say so); the paper's 64 x 224 where a GPU is.
TS_RUN   ?= $(DATASET)_$(PROTOCOL)_two_stage
TS_CACHE ?= $(CACHE_DIR)/two-stage
FT_EPOCHS ?= $(EPOCHS)
TS_CLIP  = $(or $(CLIP_LEN),64)
TS_CROP  = $(or $(CROP_SIZE),224)
TS_SHAPE = $(shell $(PY) -m pipeline.i3d.spec --model-options $(call q,$(TS_CLIP)) $(call q,$(TS_CROP)))
TS_I3D   = $(RUNS_DIR)/$(TS_RUN)_i3d/best.pt
.PHONY: two-stage
two-stage: setup  ## crops, cache, fine-tune I3D, cache its features (TS_CACHE), train + evaluate the head, each video decoded once: DATASET= PROTOCOL= [CLIP_LEN=32 CROP_SIZE=112] [FT_EPOCHS=] [EPOCHS=]
	$(call need,PROTOCOL,the evaluation protocol (e.g. cs))
	$(PY) -m tasks.crops $(call opt,DATASET,--dataset) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_DIR,--cache-dir) $(call opt,DATA_ROOT,--data-root)
	$(PY) -m tasks.cache $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_DIR,--cache-dir) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,DATA_ROOT,--data-root) --pixels store
	$(LAUNCH) -m vpn_head.train.finetune $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,MANIFEST,--manifest) $(call opt,CACHE_DIR,--cache-dir) $(call opt,RUNS_DIR,--runs-dir) --run $(call q,$(TS_RUN)_i3d) --pixels store $(call opt,FT_EPOCHS,--epochs) $(call opt,VARIANT,--variant) $(call opt,TS_CLIP,--clip-len) $(call opt,TS_CROP,--crop-size) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,DATA_ROOT,--data-root) $(call opt,PER_GPU_BATCH,--per-gpu-batch) $(call args,TRAIN_ARGS)
	$(PY) -m tasks.cache $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,MANIFEST,--manifest) $(call opt,TS_CACHE,--cache-dir) $(call opt,TS_I3D,--i3d-weights) $(call opt,TS_CLIP,--clip-len) $(call opt,TS_CROP,--crop-size) $(call opt,DATA_ROOT,--data-root) $(call opt,CACHE_DIR,--crops-root) --pixels store
	$(PY) -m vpn_head.train.head $(call opt,DATASET,--dataset) $(call opt,PROTOCOL,--protocol) $(call opt,VARIANT,--variant) $(call opt,EPOCHS,--epochs) $(call opt,TS_CACHE,--cache-dir) $(call opt,RUNS_DIR,--runs-dir) --run $(call q,$(TS_RUN)_head) $(TS_SHAPE) $(call each,MODEL,--model) $(call opt,READING,--reading) $(call args,TRAIN_ARGS)
	$(PY) -m vpn_head.eval.evaluate $(call opt,RUNS_DIR,--runs-dir) --run $(call q,$(TS_RUN)_head) $(call opt,DATASET,--dataset) --split test $(call opt,TS_CACHE,--cache-dir) $(call opt,MANIFEST,--manifest) $(call opt,DATA_ROOT,--data-root)

# cost at scale and the prepared GPU run (issue 13)
GPU_CHECK_OUT ?= bench/results/gpu_check.json

.PHONY: gpu-check
gpu-check: setup  ## one prepared GPU run (< 8 min), one JSON: I3D, pipeline, head, fine-tune, DDP [SMOKE=1: tiny, CPU]
	$(PY) -m bench.gpu_check $(call opt,GPU_CHECK_OUT,--out) $(if $(SMOKE),--smoke,) $(call opt,I3D_WEIGHTS,--i3d-weights)

# --- trusting the cache (issue 10): verify a cache, retry recorded failures, fuzz the readers
RETRY_FAILED ?=
FUZZ_REPORT ?= bench/results/fuzz.json

verify: setup  ## full check of a cache without rebuilding: [CACHE=folder|root] (default CACHE_DIR); exit 1 names bad files
	$(PY) -m pipeline.tools.verify_cache $(call q,$(or $(CACHE),$(CACHE_DIR)))

fuzz: setup  ## fuzz the 4 skeleton readers with mutated real samples: [N=2500] cases per reader
	mkdir -p $(call q,$(dir $(FUZZ_REPORT)))
	FUZZ_EXAMPLES=$(call q,$(if $(filter command line,$(origin N)),$(N),2500)) FUZZ_REPORT=$(call q,$(FUZZ_REPORT)) $(PY) -m pytest -q -s -p no:cacheprovider -m fuzz tests/pipeline/datasets/test_fuzz.py

clean-demo:  ## remove the demo's data
	rm -rf -- $(call q,$(DEMO_ROOT)) $(call q,$(DEMO_DIR))

# using a trained model (issue 30): raw videos in, top-k out; where it looks; runs in TensorBoard
TOPK ?= 5
INFER_OPTS = $(call opt,RUNS_DIR,--runs-dir) $(call opt,RUN,--run) $(call opt,INPUT,--input) $(call opt,SKELETON,--skeleton) $(call opt,DATA_ROOT,--data-root) $(call opt,TOPK,--topk) $(call opt,OUT,--out) $(call opt,CHECKPOINT,--checkpoint) $(call opt,CACHE_DIR_GIVEN,--cache-dir) $(call opt,I3D_WEIGHTS,--i3d-weights) $(call opt,DEVICE,--device) $(call opt,BATCH_SIZE,--batch-size)
CACHE_DIR_GIVEN = $(if $(call given,CACHE_DIR),$(CACHE_DIR),)
.PHONY: predict explain tensorboard
predict: setup  ## top-k classes of raw videos with a trained head run: RUN=name INPUT=video|folder|manifest.csv [SKELETON=…] [TOPK=5] [OUT=…]
	$(call need,RUN,the trained run to use)
	$(call need,INPUT,a video, a folder of the dataset's files, or a manifest)
	$(PY) -m vpn_head.infer.predict $(INFER_OPTS)

explain: setup  ## where a run looks in one video: crop strip + MP4 with A_ST, joint heatmap, top-k: RUN=name INPUT=video [SKELETON=…] [OUT=…]
	$(call need,RUN,the trained run to use)
	$(call need,INPUT,the video to explain)
	$(PY) -m vpn_head.infer.explain $(INFER_OPTS)

tensorboard: setup  ## TensorBoard over the runs' scalars on TB_HOST:PORT (127.0.0.1:6006): [RUNS_DIR=runs]
	$(PY) -m tensorboard.main --logdir $(call q,$(RUNS_DIR)) --host $(call q,$(or $(TB_HOST),127.0.0.1)) --port $(call q,$(or $(TB_PORT),6006))
INFER_VARS := RUN RUNS_DIR INPUT SKELETON DATA_ROOT TOPK OUT CHECKPOINT CACHE_DIR I3D_WEIGHTS DEVICE BATCH_SIZE
VARS_predict := $(INFER_VARS)
VARS_explain := $(INFER_VARS)
VARS_tensorboard := RUNS_DIR TB_HOST TB_PORT
