#!/usr/bin/env bash
# Regenerates every table and figure in RESULTS.md. Finished runs (with a result.json) are skipped and
# unfinished ones continue from their last checkpoint (--resume), so an interrupted run_all.sh picks up
# where it stopped and never restarts a run from scratch. Finished runs' small records (config.json,
# result.json, log.jsonl, snapshots) are committed under runs/, so on a fresh clone it only redraws.
#   JOBS=2 bash run_all.sh            # two runs at a time (one thread each)
#   bash run_all.sh paired            # only the named sections (see SECTIONS), with their tables
#   bash run_all.sh report            # only RESULTS.md's tables, rewritten from runs/ (no training)
#   bash run_all.sh --list [SECTION]  # print the unfinished training jobs, one command per line, and stop
#   RUNS=/scratch/rerun bash run_all.sh   # rerun everything into another directory (runs/ untouched)
#   SCALE=paper bash run_all.sh --list    # the paper's own grid (preset paper, 5 seeds; needs a GPU and
#                                         # the full Yahoo and Yelp files), each job with its GPU-hours
#   SCALE=tiny bash run_all.sh            # every job of the cpu grid at --preset tiny, one seed (two for
#                                         # the pairs), into runs-tiny/: checks that every job's flags
#                                         # parse and that every table and figure step works (CI, ~2 min)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-1}
DATA=${LAGVAE_DATA:-}     # the real datasets' root; unset, each job looks where lagvae does (./data)
SCALE=${SCALE:-cpu}
case $SCALE in
  cpu) SECTIONS="protocol paired synthetic text modes omniglot spread trajectory report"; TINY=0 ;;
  tiny) SECTIONS="protocol paired synthetic text modes omniglot spread trajectory report"; TINY=1 ;;
  paper) SECTIONS="paper"; TINY=0 ;;
  *) echo "run_all.sh: SCALE=$SCALE: expected cpu, tiny or paper" >&2; exit 2 ;;
esac
RUNS=${RUNS:-$([ $TINY = 1 ] && echo runs-tiny || echo runs)}
# Seeds: the synthetic and paper grids' (SEEDS), the paired grid's (PAIRED_SEEDS), the text grid's
# (TEXT_SEEDS), OMNIGLOT's (IMAGE_SEEDS) and its paired grid's (IMAGE_PAIRED_SEEDS). tiny keeps one of
# each, and two pairs for an interval.
# Tables 7 and 8 evaluate each model with EVAL_SEEDS evaluation seeds (tiny: 2, enough to check the step).
if [ $TINY = 1 ]; then
  SEEDS=${SEEDS:-0}; PAIRED_SEEDS=${PAIRED_SEEDS:-"0 1"}; TEXT_SEEDS=${TEXT_SEEDS:-0}; IMAGE_SEEDS=${IMAGE_SEEDS:-0}
  IMAGE_PAIRED_SEEDS=${IMAGE_PAIRED_SEEDS:-"0 1"}
  EVAL_SEEDS=${EVAL_SEEDS:-2}
else
  SEEDS=${SEEDS:-"0 1 2 3 4"}; PAIRED_SEEDS=${PAIRED_SEEDS:-"0 1 2 3 4 5 6 7 8 9"}
  TEXT_SEEDS=${TEXT_SEEDS:-"0 1 2"}; IMAGE_SEEDS=${IMAGE_SEEDS:-"0 1"}; EVAL_SEEDS=${EVAL_SEEDS:-10}
  IMAGE_PAIRED_SEEDS=${IMAGE_PAIRED_SEEDS:-"0 1 2"}
fi
LIST=0; [ "${1:-}" = "--list" ] && { LIST=1; shift; }
ONLY="$*"
for s in $ONLY; do
  [[ " $SECTIONS " == *" $s "* ]] || { echo "run_all.sh: unknown section '$s' (expected some of: $SECTIONS)" >&2; exit 2; }
done
want() { [[ " $SECTIONS " == *" $1 "* ]] && { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }; }
# need SECTION DATASET...: before a section queues or lists a job, the data its runs train on must be
# there, as each run would check; otherwise stop, naming what is missing and where it goes.
INFO=""
need() {
  local section=$1; shift
  [ -n "$INFO" ] || INFO=$($PY data.py ${DATA:+--data-dir "$DATA"} info) \
    || { echo "run_all.sh: python data.py info failed" >&2; exit 2; }
  local missing
  missing=$(grep -E "^($(IFS='|'; echo "$*")): MISSING" <<< "$INFO" || true)
  [ -z "$missing" ] && return 0
  echo "run_all.sh: section $section needs data that is missing (LAGVAE_DATA=${DATA:-unset, so ./data}):" >&2
  echo "$missing" >&2
  exit 2
}
mkdir -p "$RUNS"

# run NAME ARGS...: queue (or list) `lagvae.py train ARGS --out $RUNS/NAME --resume` unless it has
# finished. The command checks again when it starts, because a queue or a job list can outlive the
# moment it was made (another machine or script may have finished the run meanwhile: `--resume` on a
# finished run would evaluate it again). section_done runs the queue, JOBS at a time, each appending
# to $RUNS/NAME.log. A run that fails (diverged, bad flag, killed) is named on stderr and the others
# go on: one bad run must not stall a grid that takes days; a section's tables are made only once
# every run of it has finished.
# NAME says everything that sets its run apart, so that one path never stands for two different runs:
# DATA-PRESET-BUDGET-IWK-MODE-sSEED, e.g. ptb-cpu-ep30-iw50-aggressive-s0. BUDGET: ep30 or ep12, a fixed
# 30 or 12 epochs; decay5, trained to the fifth lr decay (--epochs only a cap). IWK: the IW bound's
# sample count (iw50, iw500; an LM's NLL is exact, it keeps its siblings' name). The synthetic, modes
# and trajectory runs each have one setting, said in their section.
queue=()
failed=0
HOURS=""      # with SCALE=paper, --list ends each job with its estimated GPU-hours (set per job)
declare -A listed     # a run named by two sections (ptb seeds 0-2: paired and text) is queued once
THEN=""      # a command to run after the run, in the same lane (it needs the run's model.pt)
run() {
  local out=$RUNS/$1; shift
  [ -n "${listed[$out]:-}" ] && return 0
  if [ -f "$out/result.json" ]; then       # finished: only what follows it, if that is still to do
    [ -n "$THEN" ] && { listed[$out]=1; queue_or_list "$THEN" "$out"; }
    return 0
  fi
  listed[$out]=1
  local args=("$@")
  if [ $TINY = 1 ]; then      # the job's own flags at the tiny preset with the cpu preset's cuts of the
    args=(); while [ $# -gt 0 ]; do      # documents, vocabulary and test set; its own sizes and budgets dropped
      case $1 in
        --preset) args+=(--preset tiny --max-len 30 --max-vocab 2000 --max-test 100); shift ;;
        --epochs|--subset|--iw-samples|--max-test) shift ;;
        *) args+=("$1") ;;
      esac; shift
    done
  fi
  queue_or_list "{ [ -f $out/result.json ] || OMP_NUM_THREADS=1 $PY lagvae.py train ${args[*]} --out $out --resume; }${THEN:+ && $THEN}" "$out"
}
queue_or_list() {    # queue_or_list CMD RUN: print CMD (--list) or queue it, its output appended to RUN.log
  if [ $LIST = 1 ]; then echo "$1${HOURS:+   # ~$HOURS GPU-h}"; else
    queue+=("{ $1; } >> $2.log 2>&1 || { echo \"run_all.sh: $2 failed (exit \$?), see $2.log\" >&2; exit 1; }")
  fi
}
section_done() {     # runs the queue; true when the section's tables can be made
  local ok=1
  if [ ${#queue[@]} -gt 0 ]; then
    printf '%s\0' "${queue[@]}" | xargs -0 -P "$JOBS" -I{} bash -c '{}' || { ok=0; failed=1; }
  fi
  queue=()
  [ $LIST = 0 ] && [ $ok = 1 ]
}
# spread_eval RUN: Tables 7-8's JSON for RUN's model (`eval --eval-seeds $EVAL_SEEDS`), unless it is there.
spread_eval() {
  local out=$T/evalseeds-$1.json ckpt=$T/$1/model.pt
  [ -f "$out" ] && return 0
  if [ ! -f "$ckpt" ]; then
    echo "run_all.sh: $out needs $ckpt (checkpoints are not committed); retrain $1 with RUNS=another directory" >&2
    failed=1; return 0
  fi
  OMP_NUM_THREADS=1 $PY lagvae.py eval --ckpt "$ckpt" ${DATA:+--data-dir "$DATA"} --eval-seeds $EVAL_SEEDS --quiet > "$out.tmp" \
    && mv "$out.tmp" "$out" || { rm -f "$out.tmp"; echo "run_all.sh: eval of $ckpt failed" >&2; failed=1; }
}
FIGS=${FIGS:-$([ "$RUNS" = runs ] && echo figures || echo "$RUNS/figures")}
mkdir -p "$FIGS"
T=$RUNS     # shorthand for the table and figure commands

# SCALE=paper: the paper's own grid. Yahoo and Yelp: Tables 1, 3 and 5 (every row), Table 9's warm-ups
# from 0.0 (App. E; its starred rows are Table 1's annealing), Tables 4 and 10 on Yelp (single runs, as
# the paper's); OMNIGLOT: Tables 2 and 6 and its Table 9 column; Tables 7 and 8 by `eval --eval-seeds
# 10` on seed 0 of Ours and the VAE. 5 seeds, --preset paper, the device from $DEVICE (default cuda).
# GPU-hours are estimates from the H200 bench of the paper presets (RESULTS.md: a joint step 11.2 ms
# on Yahoo's documents, 10.8 ms on OMNIGLOT's, an SA-VAE step 93x and 64x that, 42-50 encoder steps per
# decoder step while aggressive, 4-9 aggressive epochs): 100 epochs of 3,125 Yahoo or Yelp batches are
# ~1 h, an aggressive run ~4 h, SA-VAE ~90 h; OMNIGLOT's runs (487 batches an epoch, until the fifth lr
# decay) are taken to be of the same order.
if want paper; then
  need paper yahoo yelp omniglot
  DEV=${DEVICE:-cuda}      # the paper presets need a GPU: --device cuda fails loudly on a node without one
  ROWS="lm:--lm:1 basic::1 basic-anneal:--anneal:1 beta0.2:--beta_0.2:1 beta0.4:--beta_0.4:1 beta0.6:--beta_0.6:1
        beta0.8:--beta_0.8:1 savae:--savae:90 savae-anneal:--savae_--anneal:90 aggressive:--aggressive:4
        aggressive-anneal:--aggressive_--anneal:4"
  for seed in $SEEDS; do
    for corpus in yahoo yelp omniglot; do
      for job in $ROWS; do
        IFS=: read -r name flags HOURS <<< "$job"
        run $corpus-paper-$name-s$seed --data $corpus ${DATA:+--data-dir "$DATA"} --preset paper --device $DEV \
          ${flags//_/ } --seed $seed
      done
      for n in 30000 50000 100000 120000; do
        HOURS=1
        run $corpus-paper-anneal$n-from0-s$seed --data $corpus ${DATA:+--data-dir "$DATA"} --preset paper --device $DEV \
          --anneal --kl-start 0 --warm-up-iters $n --seed $seed
      done
    done
  done
  for n in 10 30 50 70; do
    HOURS=$(( 1 + n / 20 ))
    run yelp-paper-inner$n-s0 --data yelp ${DATA:+--data-dir "$DATA"} --preset paper --device $DEV --aggressive --inner-steps $n --seed 0
  done
  for m in 2 4 6; do
    HOURS=1
    run yelp-paper-enclr$m-s0 --data yelp ${DATA:+--data-dir "$DATA"} --preset paper --device $DEV --encoder-lr-mult $m --seed 0
  done
  HOURS=""
  if section_done; then
    for corpus in yahoo yelp omniglot; do
      $PY lagvae.py table --all $T/$corpus-paper-{lm,basic,basic-anneal,beta0.?,savae,savae-anneal,aggressive,aggressive-anneal}-s*/ \
        | tee $T/table_paper_$corpus.md
      $PY lagvae.py table --all --paper-table 9 $T/$corpus-paper-anneal*-from0-s*/ $T/$corpus-paper-{basic-anneal,aggressive-anneal,aggressive}-s*/ \
        | tee $T/table_paper_${corpus}_warmup.md
      for m in aggressive basic; do spread_eval $corpus-paper-$m-s0; done
    done
    $PY lagvae.py table --all --by-run --paper-table 4 $T/yelp-paper-inner*-s0/ $T/yelp-paper-aggressive-s0 | tee $T/table_paper_inner.md
    $PY lagvae.py table --all --by-run --paper-table 10 $T/yelp-paper-enclr*-s0/ $T/yelp-paper-basic-s0 | tee $T/table_paper_enclr.md
  fi
fi

# Table 1 at the paper's own protocol (App. B): each model trained until its fifth lr decay (patience
# 2; --epochs 200 is a cap that should never bind, and the log says so where it does) and scored with
# 500 importance samples on the whole test split (the documents cut to 30 tokens and the vocabulary to
# 2,000 words, as the cpu preset cuts them; the LM's NLL is exact, so it keeps its one "sample"). ptb,
# seeds 0-9, the paper's central rows, seed by seed and Ours first so that two lanes finish a seed
# together and a grid cut short has whole seeds to pair.
# The bound's slack: for seeds 0-2 of Ours, the VAE and the LM, right after each run (in its lane, while
# its model.pt is there), the IW bound at K = 1, 50, 500 and 5,000 from the same draws on the first 500
# test documents, twice (evaluation seeds 0 and 1), and the LM's exact NLL on the same documents.
PROTOCOL="--preset cpu --epochs 200 --max-test 0"
BOUND_KS=$([ $TINY = 1 ] && echo 1,2,4 || echo 1,50,500,5000)
BOUND_SEEDS=${BOUND_SEEDS:-$([ $TINY = 1 ] && echo 0 || echo "0 1 2")}
bound_cmd() {    # bound_cmd RUN: the command that writes $T/bound-RUN.json from RUN's model.pt
  local ckpt=$T/$1/model.pt json=$T/bound-$1.json
  # A run finished on another machine has no model.pt here: its bound is left out, said, not a failure.
  echo "{ [ -f $json ] || if [ -f $ckpt ]; then OMP_NUM_THREADS=1 $PY lagvae.py eval --ckpt $ckpt" \
       "${DATA:+--data-dir $DATA} --bound $BOUND_KS --max-test 500 --eval-seeds 2 --quiet > $json.tmp && mv" \
       "$json.tmp $json; else echo \"run_all.sh: note: $json needs $ckpt (checkpoints are not committed);" \
       "its bound is left out\" >&2; fi; }"
}
if want protocol; then
  need protocol ptb
  for seed in $PAIRED_SEEDS; do
    for job in "aggressive:--aggressive --iw-samples 500" "aggressive-anneal:--aggressive --anneal --iw-samples 500" \
               "lm:--lm" "basic:--iw-samples 500" "basic-anneal:--anneal --iw-samples 500"; do
      name=ptb-cpu-decay5-iw500-${job%%:*}-s$seed
      [[ " $BOUND_SEEDS " == *" $seed "* && " aggressive lm basic " == *" ${job%%:*} "* && ! -f $T/bound-$name.json ]] \
        && THEN=$(bound_cmd $name)
      run $name --data ptb ${DATA:+--data-dir "$DATA"} $PROTOCOL ${job#*:} --seed $seed
      THEN=""
    done
  done
  if section_done; then
    for pair in "basic aggressive" "basic+anneal aggressive+anneal" "lm aggressive" "lm aggressive+anneal"; do
      $PY lagvae.py table --paired $pair --paper-data yahoo $T/ptb-cpu-decay5-iw500-*-s*/
      echo
    done | tee $T/table_protocol_ptb.md
    $PY lagvae.py table --bound $T/bound-ptb-cpu-decay5-iw500-*.json | tee $T/table_bound_ptb.md
    $PY lagvae.py figure bound $T/bound-ptb-cpu-decay5-iw500-*.json --out $FIGS/bound_ptb.png
  fi
fi

# The likelihood claims decided by paired seeds. ptb at the cpu scale (its 30 epochs), seeds 0-9, the
# paper's central rows; runs of one seed share the initialization and batch order, so B - A per seed
# removes the seed's own luck. Seed by seed, Ours first, so that two lanes finish a seed together
# (Ours ~49 min against the other four's ~47) and a grid cut short still has whole seeds to pair.
# OMNIGLOT, seeds 0-2: the VAE, Ours and the PixelCNN at a converged budget: the cpu preset's 3,000
# images trained until the fifth lr decay (the paper's stopping rule; --epochs 100 only caps it), not
# 12 or 30 epochs, which stop the VAE while its validation -ELBO still falls (hence decay5 in the name).
if want paired; then
  need paired ptb omniglot
  for seed in $PAIRED_SEEDS; do
    for job in "aggressive:--aggressive" "aggressive-anneal:--aggressive --anneal" "lm:--lm" "basic:" \
               "basic-anneal:--anneal"; do
      run ptb-cpu-ep30-iw50-${job%%:*}-s$seed --data ptb ${DATA:+--data-dir "$DATA"} --preset cpu ${job#*:} --seed $seed
    done
  done
  for seed in $IMAGE_PAIRED_SEEDS; do
    for job in "aggressive:--aggressive" "basic:" "lm:--lm"; do
      run omniglot-cpu-decay5-iw50-${job%%:*}-s$seed --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu \
        --epochs 100 ${job#*:} --seed $seed
    done
  done
  section_done && grid=1 || grid=0
  # The lr-schedule control: does the VAE - Ours gap come from their decay epochs? Seed 0's VAE with
  # the lr decays of seed 0's Ours (--decay-at reads them from its run), so queued after it.
  run omniglot-cpu-decay5-iw50-basic-decayat-s0 --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --epochs 100 \
    --decay-at $T/omniglot-cpu-decay5-iw50-aggressive-s0 --seed 0
  if section_done && [ $grid = 1 ]; then
    for pair in "basic aggressive" "basic+anneal aggressive+anneal" "lm aggressive" "lm aggressive+anneal"; do
      set -- $pair
      $PY lagvae.py table --paired $1 $2 --paper-data yahoo \
        $T/ptb-cpu-ep30-iw50-{lm,basic,basic-anneal,aggressive,aggressive-anneal}-s*/
      echo      # a blank line keeps the markdown tables apart
    done | tee $T/table_paired_ptb.md
    for pair in "basic aggressive" "lm aggressive" "lm basic" "basic basic+decayat" "basic+decayat aggressive"; do
      $PY lagvae.py table --paired $pair $T/omniglot-cpu-decay5-iw50-*-s*/
      echo
    done | tee $T/table_paired_omniglot.md
  fi
fi

# Figure 2: scalar latent on synthetic data, no annealing, 5 seeds: basic, aggressive
# with the paper's rules and with the adaptive rules; posterior-mean snapshots after 0, 200 and 2000
# generator updates and at the end. Cheap runs first, so that partial tables fill in early.
if want synthetic; then
  for job in "basic:" "aggressive-adaptive:--aggressive --rule adaptive" "aggressive:--aggressive"; do
    for seed in $SEEDS; do
      run synthetic-nz1-${job%%:*}-s$seed --data synthetic --data-dir data --preset synthetic --nz 1 ${job#*:} \
        --snapshot-iters 0,200,2000 --seed "$seed"
    done
  done
  # The adaptive rule with 8 MI checks per epoch instead of 4, one seed (named outside the globs above).
  run checks8-synthetic-nz1-adaptive-s0 --data synthetic --data-dir data --preset synthetic --nz 1 --aggressive \
    --rule adaptive --mi-checks 8 --seed 0
  if section_done; then
    $PY lagvae.py table --all $T/synthetic-nz1-*/ | tee $T/table_synthetic_nz1.md
    $PY lagvae.py figure posterior $T/synthetic-nz1-basic-s0 $T/synthetic-nz1-aggressive-s0 --out $FIGS/posterior_means.png
    $PY lagvae.py figure dynamics $T/synthetic-nz1-basic-s0 $T/synthetic-nz1-aggressive-s0 --out $FIGS/dynamics_synthetic.png
    $PY lagvae.py figure nll-au $T/synthetic-nz1-*/ --out $FIGS/nll_au_synthetic.png
  fi
fi

# Tables 1, 3 and 5 on the real text available offline (cpu preset, its 30 epochs, seeds 0-2): every
# row of the paper's Table 1 and the later remedies, on ptb and yahoo-small. The paper's own rows (LM,
# VAE, VAE + anneal, Ours, Ours + anneal) get all three seeds before the remedies start, so that a
# grid cut short still has the central comparison. SA-VAE costs 11x a basic run's gradient steps and
# time (ptb seed 0: an 80-min run), so its seed 0 runs after all of these and its seeds 1 and 2 after
# Tables 9 and 10. Free bits 0.125 per dimension is 4 nats over nz 32 (the FB(4) row of
# later-remedies.md); cyclical annealing with Fu et al.'s 4 cycles; BN-VAE with Zhu et al.'s gamma 0.6.
text_rows() {    # text_rows SEED "NAME:FLAGS"...: each row on both corpora
  local seed=$1 corpus job; shift
  for corpus in ptb yahoo-small; do
    for job in "$@"; do
      run $corpus-cpu-ep30-iw50-${job%%:*}-s$seed --data $corpus ${DATA:+--data-dir "$DATA"} --preset cpu ${job#*:} --seed $seed
    done
  done
}
if want text; then
  need text ptb yahoo-small
  for seed in $TEXT_SEEDS; do
    text_rows $seed "basic:" "aggressive:--aggressive" "lm:--lm" "basic-anneal:--anneal" \
      "aggressive-anneal:--aggressive --anneal"
    run ptb-cpu-ep30-iw50-aggressive-adaptive-s$seed --data ptb ${DATA:+--data-dir "$DATA"} --preset cpu --aggressive --rule adaptive --seed $seed
  done
  for seed in $TEXT_SEEDS; do
    text_rows $seed "beta0.2:--beta 0.2" "beta0.4:--beta 0.4" "beta0.6:--beta 0.6" "beta0.8:--beta 0.8" \
      "fb0.125:--free-bits 0.125" "cyclical4:--cyclical 4" "bn0.6:--bn-gamma 0.6" "pretrain:--pretrain-encoder"
  done
  # The adaptive rule on yahoo-small, one seed (ptb has three above).
  run yahoo-small-cpu-ep30-iw50-aggressive-adaptive-s0 --data yahoo-small ${DATA:+--data-dir "$DATA"} --preset cpu --aggressive --rule adaptive --seed 0
  # SA-VAE (Table 1's SA-VAE rows), seed 0, before Tables 9 and 10.
  text_rows 0 "savae:--savae" "savae-anneal:--savae --anneal"
  # Tables 4, 9 and 10 on ptb, seed 0 (the paper ran them on Yelp, and Table 9 on all three; ptb is the
  # cheaper corpus). Table 4: fixed inner budgets; the convergence rule is ptb-cpu-ep30-iw50-aggressive-s0.
  # Table 9: the paper's 30k-120k warm-up iterations are 10-38% of its 100-epoch Yahoo budget (3,125
  # batches an epoch); the same fractions of our 30 epochs of 136 ptb batches are 390-1570 iterations.
  # App. E warms up from 0.0 (Table 1's annealing starts at 0.1), seeds 0-2.
  # Table 10: the encoder's lr 2x, 4x, 6x (1x is ptb-cpu-ep30-iw50-basic-s0).
  for seed in $TEXT_SEEDS; do
    for n in 390 650 1300 1570; do
      run ptb-cpu-ep30-iw50-anneal$n-from0-s$seed --data ptb ${DATA:+--data-dir "$DATA"} --preset cpu --anneal --kl-start 0 \
        --warm-up-iters $n --seed $seed
    done
  done
  for m in 2 4 6; do
    run ptb-cpu-ep30-iw50-enclr$m-s0 --data ptb ${DATA:+--data-dir "$DATA"} --preset cpu --encoder-lr-mult $m --seed 0
  done
  for seed in $TEXT_SEEDS; do      # seed 0's were queued above
    text_rows $seed "savae:--savae" "savae-anneal:--savae --anneal"
  done
  # Table 4 on the CPU last: its result is already had from the same preset on a GPU (RESULTS.md), and
  # Table 1's rows, SA-VAE's included, get their three seeds first.
  for n in 10 30 50 70; do
    run ptb-cpu-ep30-iw50-inner$n-s0 --data ptb ${DATA:+--data-dir "$DATA"} --preset cpu --aggressive --inner-steps $n --seed 0
  done
  if section_done; then
    T1="lm basic basic-anneal beta0.2 beta0.4 beta0.6 beta0.8 savae savae-anneal aggressive aggressive-adaptive
        aggressive-anneal fb0.125 cyclical4 bn0.6 pretrain"
    $PY lagvae.py table --all $(for c in ptb yahoo-small; do for r in $T1; do
                                 ls -d $T/$c-cpu-ep30-iw50-$r-s[012]/ 2>/dev/null; done; done) \
      | tee $T/table_text.md
    $PY lagvae.py table --all --by-run --paper-data yelp --paper-table 4 $T/ptb-cpu-ep30-iw50-inner*-s0/ \
      $T/ptb-cpu-ep30-iw50-aggressive-s0 $T/ptb-cpu-ep30-iw50-basic-s0 | tee $T/table_text_inner.md
    $PY lagvae.py table --all --paper-data yahoo --paper-table 9 $T/ptb-cpu-ep30-iw50-anneal*-from0-s[012]/ \
      $T/ptb-cpu-ep30-iw50-{basic-anneal,aggressive-anneal,aggressive}-s[012]/ | tee $T/table_text_warmup.md
    $PY lagvae.py table --all --by-run --paper-data yelp --paper-table 10 $T/ptb-cpu-ep30-iw50-enclr*-s0/ \
      $T/ptb-cpu-ep30-iw50-basic-s0 | tee $T/table_text_enclr.md
    $PY lagvae.py figure nll-au $T/ptb-cpu-ep30-iw50-*-s[012]/ --out $FIGS/nll_au_ptb.png
    $PY lagvae.py figure nll-au $T/yahoo-small-cpu-ep30-iw50-*-s[012]/ --out $FIGS/nll_au_yahoo.png
    $PY lagvae.py figure dynamics $T/ptb-cpu-ep30-iw50-basic-anneal-s0 $T/ptb-cpu-ep30-iw50-aggressive-s0 \
      $T/ptb-cpu-ep30-iw50-beta0.2-s0 --out $FIGS/dynamics_ptb.png
  fi
fi

# Every training mode, one seed, synthetic data (nz 2), 2,000 training sentences, 6 epochs,
# IW-NLL with 100 samples on the first 500 test sentences.
if want modes; then
  for flags in "" "--aggressive" "--anneal" "--aggressive --anneal" "--beta 0.4" "--savae" "--savae --anneal" \
               "--lm" "--encoder-lr-mult 2" "--free-bits 0.25" "--cyclical 2" "--bn-gamma 0.6" "--pretrain-encoder"; do
    name=modes$(echo "$flags" | tr -d ' ' | sed 's/--/-/g')
    run "$name" --data synthetic --data-dir data --preset synthetic --subset 2000 --epochs 6 \
      --iw-samples 100 --max-test 500 --seed 0 $flags
  done
  if section_done; then
    $PY lagvae.py table --all $T/modes*/ | tee $T/table_modes.md
    $PY lagvae.py figure dynamics $T/modes $T/modes-aggressive $T/modes-beta0.4 --out $FIGS/dynamics_modes.png
    $PY lagvae.py figure nll-au $T/modes*/ --out $FIGS/nll_au_modes.png
  fi
fi

# Omniglot, cpu preset (12 epochs: ep12), basic vs aggressive (2 seeds), the PixelCNN without z (exact
# NLL), and seed 0 of both trained for 30 epochs instead of 12 (ep30).
if want omniglot; then
  need omniglot omniglot
  for seed in $IMAGE_SEEDS; do
    run omniglot-cpu-ep12-iw50-basic-s$seed --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --seed "$seed"
    run omniglot-cpu-ep12-iw50-aggressive-s$seed --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --aggressive --seed "$seed"
  done
  run omniglot-cpu-ep12-iw50-lm-s0 --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --lm --seed 0
  run omniglot-cpu-ep30-iw50-basic-s0 --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --epochs 30 --seed 0
  run omniglot-cpu-ep30-iw50-aggressive-s0 --data omniglot ${DATA:+--data-dir "$DATA"} --preset cpu --epochs 30 --aggressive --seed 0
  if section_done; then
    $PY lagvae.py table --all $T/omniglot-cpu-ep12-iw50-*/ | tee $T/table_omniglot.md
    $PY lagvae.py table --all --by-run $T/omniglot-cpu-ep12-iw50-*/ | tee $T/table_omniglot_by_run.md
    $PY lagvae.py table --all $T/omniglot-cpu-ep30-iw50-*/ | tee $T/table_omniglot_30.md
    $PY lagvae.py figure dynamics $T/omniglot-cpu-ep12-iw50-basic-s0 $T/omniglot-cpu-ep12-iw50-aggressive-s0 \
      --out $FIGS/dynamics_omniglot.png
    for mode in basic aggressive; do     # needs the checkpoints: only where the runs were trained
      ckpt=$T/omniglot-cpu-ep12-iw50-$mode-s0/model.pt
      [ -f $ckpt ] && $PY lagvae.py samples --ckpt $ckpt \
        ${DATA:+--data-dir "$DATA"} --out $FIGS/omniglot_samples_$mode.png
    done
  fi
fi

# Tables 7 and 8 (App. D): the evaluation's own noise. Seed 0 of Ours and of the VAE on each
# dataset, evaluated with 10 evaluation seeds. The JSON are committed; the checkpoints they need are not.
if want spread; then
  need spread ptb yahoo-small omniglot
  SPREAD="ptb-cpu-ep30-iw50 yahoo-small-cpu-ep30-iw50 omniglot-cpu-ep12-iw50"    # the cpu preset's budgets
  for prefix in $SPREAD; do
    for job in "aggressive:--aggressive" "basic:"; do
      run $prefix-${job%%:*}-s0 --data ${prefix%%-cpu-*} ${DATA:+--data-dir "$DATA"} --preset cpu ${job#*:} --seed 0
    done
  done
  if section_done; then
    for prefix in $SPREAD; do
      for m in aggressive basic; do spread_eval $prefix-$m-s0; done
    done
    $PY lagvae.py table --spread $T/evalseeds-{ptb,yahoo-small}-cpu-ep30-iw50-{aggressive,basic}-s0.json \
      $T/evalseeds-omniglot-cpu-ep12-iw50-{aggressive,basic}-s0.json \
      | tee $T/table_spread.md
  fi
fi

# Figure 3: one example's path through the first 30 generator updates (basic and aggressive).
if want trajectory; then
  run trajectory-basic --data synthetic --data-dir data --preset synthetic --nz 1 --subset 500 --epochs 1 \
    --iw-samples 0 --trajectory-iters 30 --seed 0
  run trajectory-aggressive --data synthetic --data-dir data --preset synthetic --nz 1 --subset 500 --epochs 1 \
    --iw-samples 0 --trajectory-iters 30 --seed 0 --aggressive
  if section_done; then
    $PY lagvae.py figure trajectory $T/trajectory-basic $T/trajectory-aggressive --out $FIGS/trajectory.png
  fi
fi

# The report: RESULTS.md's tables rewritten from the records under runs/ (no training, a few seconds;
# only where the runs are runs/, the directory RESULTS.md's commands name).
if want report && [ $LIST = 0 ] && [ "$RUNS" = runs ]; then
  $PY lagvae.py report RESULTS.md
fi

if [ $failed = 1 ]; then
  echo "run_all.sh: the runs named above failed; fix them and rerun (finished runs are skipped)" >&2
  exit 1
fi
