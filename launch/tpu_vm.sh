#!/usr/bin/env bash
# Trains mexd on a Cloud TPU VM or TPU pod slice: every worker (host) of the
# TPU runs the same `python -m mexd.train --multiprocess` at the same time, and
# jax.distributed.initialize() joins them (it finds the workers from the TPU
# metadata). Run it from your own machine, where gcloud is set up.
#
#   launch/tpu_vm.sh --name=mexd-v4 --zone=us-central2-b --project=my-proj \
#     --accelerator=v4-32 --create \
#     --config=configs/cifar100.py --workdir=gs://my-bucket/runs/c100-eed \
#     -- --config.num_epochs=200
#
# Steps (each printed before it runs; --dry-run prints them and runs nothing):
#   1. --create only: gcloud compute tpus tpu-vm create NAME (ACCELERATOR,
#      VERSION [, --spot]).
#   2. On every worker (gcloud compute tpus tpu-vm ssh --worker=all): fetch
#      REPO at REF into ~/mexd, make a venv ~/mexd-venv, pip install
#      "jax[tpu]" and the checkout; with a gs:// workdir, also gcsfs and
#      google-cloud-storage (the clients etils.epath and orbax use for gs://).
#   3. On every worker at once: python -m mexd.train --multiprocess
#      --config=CONFIG --workdir=WORKDIR [extra flags after --]. Worker 0
#      prints the progress; with --detach the job runs under nohup (log in
#      ~/mexd-train.log on each worker) and this script returns at once.
#
# The workdir must be one folder that every worker sees: orbax writes one
# checkpoint together from all workers, and process 0 writes the metrics.
# Use gs://BUCKET/PATH (mexd and orbax write the bucket directly, through
# etils.epath; the TPU's service account needs write access to it) or an
# NFS / Filestore mount. Re-running the same command resumes from the newest
# checkpoint (also after a spot TPU was preempted and recreated).
#
# Flags (--flag=value or --flag value):
#   --name NAME            TPU name (required).
#   --zone ZONE            zone of the TPU (required), e.g. us-central2-b.
#   --project PROJECT      GCP project (default: gcloud's configured one).
#   --accelerator TYPE     accelerator type for --create (default v4-8), e.g.
#                          v4-32, v5litepod-16, v6e-8.
#   --version VERSION      TPU software version for --create (default
#                          tpu-ubuntu2204-base).
#   --create               create the TPU first.
#   --spot                 with --create: a spot (preemptible) TPU.
#   --repo URL             git URL of mexd (default
#                          https://github.com/mexd/mexd.git).
#   --ref REF              branch, tag or commit to run (default main);
#                          --branch is the same flag.
#   --config SPEC          config file in the repo, "path.py[:arg]" (default
#                          configs/digits.py).
#   --workdir DIR          shared work directory (required): gs://BUCKET/PATH
#                          or a path mounted on every worker.
#   --extras LIST          mexd extras to install on the workers, comma
#                          separated, e.g. stream (the grain pipeline of the
#                          imagenet recipe).
#   --skip-setup           do not run step 2 (the workers are set up).
#   --detach               start training in the background and return.
#   --dry-run              print the commands, run nothing.
#   -h, --help             this text.
#   -- FLAGS...            more mexd.train flags, e.g. --config.batch_size=512.

set -euo pipefail

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"; }
die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

NAME="" ZONE="" PROJECT="" ACCELERATOR="v4-8" VERSION="tpu-ubuntu2204-base"
CREATE=0 SPOT=0 REPO="https://github.com/mexd/mexd.git" REF="main"
CONFIG="configs/digits.py" WORKDIR="" SETUP=1 DETACH=0 DRY_RUN=0 EXTRAS=""
EXTRA=()

while (($#)); do
  arg="$1"
  shift
  case "$arg" in
    --) EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    --create) CREATE=1; continue ;;
    --spot) SPOT=1; continue ;;
    --skip-setup) SETUP=0; continue ;;
    --detach) DETACH=1; continue ;;
    --dry-run) DRY_RUN=1; continue ;;
    --*=*) key="${arg%%=*}" value="${arg#*=}" ;;
    --*) (($#)) || die "$arg needs a value"
         key="$arg" value="$1"; shift ;;
    *) die "unexpected argument '$arg' (mexd.train flags go after --)" ;;
  esac
  case "$key" in
    --name) NAME="$value" ;;
    --zone) ZONE="$value" ;;
    --project) PROJECT="$value" ;;
    --accelerator|--accelerator-type) ACCELERATOR="$value" ;;
    --version) VERSION="$value" ;;
    --repo) REPO="$value" ;;
    --ref|--branch) REF="$value" ;;
    --config) CONFIG="$value" ;;
    --workdir) WORKDIR="$value" ;;
    --extras) EXTRAS="$value" ;;
    *) die "unknown flag $key (see --help)" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required (a folder all workers see)"
if ((SPOT && !CREATE)); then die "--spot only applies with --create"; fi

# Reads a heredoc into the variable $1 (also in the bash 3.2 of macOS).
heredoc() { IFS= read -r -d '' "$1" || true; }

# A gs:// workdir is written directly (etils.epath, orbax); every worker
# needs the GCS clients for it.
GCS_PKGS=""
if [[ "$WORKDIR" == gs://* ]]; then
  path="${WORKDIR#gs://}"
  [[ -n "${path%%/*}" ]] || die "--workdir=$WORKDIR has no bucket"
  GCS_PKGS=" gcsfs google-cloud-storage"
fi
RUN_WORKDIR=$(printf %q "$WORKDIR")
[[ "$EXTRAS" =~ ^[a-z,]*$ ]] || die "--extras=$EXTRAS: comma-separated names"
MEXD_SPEC="\$HOME/mexd"
if [[ -n "$EXTRAS" ]]; then MEXD_SPEC="\$HOME/mexd[$EXTRAS]"; fi

GCLOUD_TARGET=("$NAME" "--zone=$ZONE")
if [[ -n "$PROJECT" ]]; then GCLOUD_TARGET+=("--project=$PROJECT"); fi

# Step 2, run on every worker: the same code at REF, jax[tpu] and mexd.
heredoc SETUP_CMD <<EOF
set -euo pipefail
mkdir -p "\$HOME/mexd" && cd "\$HOME/mexd"
git rev-parse --git-dir >/dev/null 2>&1 || git init -q
git remote remove origin 2>/dev/null || true
git remote add origin $(printf %q "$REPO")
git fetch -q --depth 1 origin $(printf %q "$REF")
git checkout -q --force FETCH_HEAD
if [ ! -x "\$HOME/mexd-venv/bin/python" ]; then
  python3 -m venv "\$HOME/mexd-venv" || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv "\$HOME/mexd-venv"; }
fi
"\$HOME/mexd-venv/bin/pip" install -q -U pip
"\$HOME/mexd-venv/bin/pip" install -q -e "$MEXD_SPEC" "jax[tpu]"$GCS_PKGS
echo "\$(hostname): mexd \$(git rev-parse --short HEAD), \$("\$HOME/mexd-venv/bin/python" -c 'import jax; print("jax", jax.__version__)')"
EOF

# Step 3, run on every worker at once.
TRAIN="python -m mexd.train --multiprocess --config=$(printf %q "$CONFIG") --workdir=$RUN_WORKDIR"
if ((${#EXTRA[@]})); then TRAIN="$TRAIN$(printf ' %q' "${EXTRA[@]}")"; fi
if ((DETACH)); then
  TRAIN="nohup $TRAIN > \"\$HOME/mexd-train.log\" 2>&1 < /dev/null &"
fi
TRAIN_CMD="cd \"\$HOME/mexd\" && source \"\$HOME/mexd-venv/bin/activate\" && $TRAIN"

run() {
  # Prints the command (shell-quoted, so it can be pasted) and runs it.
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  ((DRY_RUN)) || "$@"
}

if ((CREATE)); then
  create=(gcloud compute tpus tpu-vm create "${GCLOUD_TARGET[@]}"
          "--accelerator-type=$ACCELERATOR" "--version=$VERSION")
  if ((SPOT)); then create+=(--spot); fi
  run "${create[@]}"
fi
remote() {  # The script a step runs on every worker, as comment lines.
  echo "# on every worker of $NAME:"
  printf '%s\n' "$1" | sed -e '/^$/d' -e 's/^/#   /'
}

if ((SETUP)); then
  remote "$SETUP_CMD"
  run gcloud compute tpus tpu-vm ssh "${GCLOUD_TARGET[@]}" --worker=all \
      "--command=$SETUP_CMD"
fi
remote "$TRAIN_CMD"
run gcloud compute tpus tpu-vm ssh "${GCLOUD_TARGET[@]}" --worker=all \
    "--command=$TRAIN_CMD"
