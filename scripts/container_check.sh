#!/usr/bin/env bash
# `make container-check`: the container images built and started for real, without a Docker daemon
# (needs root and apt: a Debian bookworm machine).
#
#   1. tools      podman and debootstrap from Debian's packages, when missing
#   2. base       a Debian bookworm root filesystem made with debootstrap (minbase + python3.11, venv,
#                 ca-certificates), cached as a tar, imported into podman as localhost/ml-backend-base:bookworm
#   3. build-cpu  docker/Dockerfile with `podman build --isolation chroot`, BASE_IMAGE = that base and
#                 torch 2.13.0 (CPU) from this machine's wheel (TORCH_WHEELS), not download.pytorch.org
#   4. run-cpu    the image's own command (its CMD/ENTRYPOINT) in a container, MODEL_DIR on a temporary
#                 directory; scripts/container_smoke.py checks /health, /setup + /predict for one image
#                 task, an ANNOTATION_CREATED /webhook and the model it trains; then a clean stop (SIGTERM)
#   5. build-gpu  docker/Dockerfile.gpu, built only (running it needs a GPU); when the CUDA torch index
#                 cannot be reached from here, built with the local CPU wheel, and that is said
#
# Caches (kept between runs, ignored by git): .cache/container/ (the base tar, podman's storage,
# the torch wheel link). `scripts/container_check.sh clean` removes them.
# Settings (environment): STAGES (default: "tools base build-cpu run-cpu build-gpu", or the stages as
# arguments), TORCH_WHEEL (the CPU torch wheel; default: found under /opt/wheels or the local pip
# indexes), DEBIAN_MIRROR, STORAGE_DRIVER (overlay, falling back to vfs), NICE (10), KEEP_RUNNING=1,
# HOST_CA_BUNDLE (the CA bundle pip trusts in the builds' RUN steps: this machine's, by default).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$ROOT/.cache/container
WHEELS_REL=.cache/container/wheels            # inside the build context (the repository root)
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_IMAGE=localhost/ml-backend-base:$SUITE
CPU_IMAGE=localhost/ml-backend:cpu-check
GPU_IMAGE=localhost/ml-backend:gpu-check
TORCH_VERSION=2.13.0
GPU_TORCH_INDEX=$(sed -n 's/^ARG TORCH_INDEX=//p' "$ROOT/docker/Dockerfile.gpu" | head -n1)
NICE=${NICE:-10}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
CONTAINER=ml-backend-check-$$
STARTED=$(date +%s)

log() { printf '[container-check %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "FAILED: $*" >&2; exit 1; }
stage() {  # stage NAME FUNCTION: runs it, with its time
    local name=$1 t0
    t0=$(date +%s)
    log "==> $name"
    "$2"
    log "<== $name: done in $(( $(date +%s) - t0 ))s"
    TIMINGS+=("$(printf '%-10s %5ss' "$name" "$(( $(date +%s) - t0 ))")")
}
TIMINGS=()

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, podman's storage, chroot builds): run it as root"

# podman with its storage under .cache/container (not /var/lib/containers), no registry needed
PODMAN_ARGS=()
pm() { podman "${PODMAN_ARGS[@]}" "$@"; }
podman_setup() {
    local driver=${STORAGE_DRIVER:-}
    mkdir -p "$CACHE/storage" "$CACHE/run"
    if [ -z "$driver" ]; then
        if [ -f "$CACHE/storage-driver" ]; then
            driver=$(cat "$CACHE/storage-driver")
        else  # overlay when the kernel mounts it here, else vfs (slower: a full copy per layer)
            local probe
            probe=$(mktemp -d "$CACHE/overlay-probe.XXXXXX")
            mkdir -p "$probe"/{l,u,w,m}
            if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
                umount "$probe/m"; driver=overlay
            else
                driver=vfs
            fi
            rm -rf "$probe"
            echo "$driver" > "$CACHE/storage-driver"  # the storage cannot change driver once made
        fi
    fi
    # the OCI runtime: crun (podman's default) refuses a hybrid cgroup layout (v1 controllers plus a
    # cgroup v2 hierarchy with controllers, as on this kind of VM): runc handles it
    local runtime=crun
    if grep -qs . /sys/fs/cgroup/unified/cgroup.controllers || ! command -v crun >/dev/null 2>&1; then runtime=runc; fi
    if ! command -v "$runtime" >/dev/null 2>&1; then
        log "installing $runtime from Debian's packages (hybrid cgroups: crun cannot run containers here)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$runtime" >/dev/null
    fi
    # podman's default limits (nofile 1048576...) need CAP_SYS_RESOURCE, which a VM's root may lack:
    # the containers get this shell's hard limit of open files, and podman's own process limit
    local nofile nproc=32768
    nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
    if [ "$(ulimit -Hu)" != unlimited ] && [ "$(ulimit -Hu)" -lt "$nproc" ]; then nproc=$(ulimit -Hu); fi
    printf '%s\n' "# written by scripts/container_check.sh" "[containers]" \
        "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]" \
        "[engine]" "runtime = \"$runtime\"" "cgroup_manager = \"cgroupfs\"" "events_logger = \"file\"" \
        > "$CACHE/containers.conf"
    export CONTAINERS_CONF=$CACHE/containers.conf
    PODMAN_ARGS=(--root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$driver")
    log "podman $(podman --version | awk '{print $3}'), runtime $runtime, storage driver $driver," \
        "storage $CACHE/storage, limits nofile=$nofile nproc=$nproc"
}

# --- 1. tools ----------------------------------------------------------------------------------
tools() {
    local need=()
    command -v podman >/dev/null 2>&1 || need+=(podman)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    # netavark sets up the bridge network with iptables; without it `podman run` fails with
    # "netavark: No such file or directory"
    command -v iptables >/dev/null 2>&1 || need+=(iptables)
    if [ ${#need[@]} -eq 0 ]; then
        log "podman and debootstrap already installed"
    else
        log "installing ${need[*]} from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
            conmon netavark slirp4netns uidmap >/dev/null
    fi
    [ ${#PODMAN_ARGS[@]} -gt 0 ] || podman_setup
}

# --- 2. base -----------------------------------------------------------------------------------
base() {
    local key tar rootfs
    key="$SUITE-minbase-${BASE_PACKAGES//,/+}"
    tar=$CACHE/base/$key.tar
    if [ -s "$tar" ]; then
        log "base root filesystem cached: $tar ($(du -h "$tar" | cut -f1))"
    else
        rootfs=$CACHE/base/rootfs.tmp
        rm -rf "$rootfs"; mkdir -p "$rootfs"
        log "debootstrap --variant=minbase --include=$BASE_PACKAGES $SUITE from $DEBIAN_MIRROR (minutes)"
        nice -n "$NICE" debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$DEBIAN_MIRROR" \
            > "$CACHE/base/debootstrap.log" 2>&1 || { tail -n 30 "$CACHE/base/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/base/debootstrap.log)"; }
        # the same sources a container of it should use; no package caches in the image
        echo "deb $DEBIAN_MIRROR $SUITE main" > "$rootfs/etc/apt/sources.list"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
        tar --numeric-owner --xattrs -C "$rootfs" -cf "$tar.tmp" .
        mv "$tar.tmp" "$tar"
        rm -rf "$rootfs"
        log "base root filesystem: $tar ($(du -h "$tar" | cut -f1))"
    fi
    local digest
    digest=$(sha256sum "$tar" | cut -c1-16)
    if [ "$(pm image inspect --format '{{index .Labels "base-tar"}}' "$BASE_IMAGE" 2>/dev/null || true)" = "$digest" ]; then
        log "$BASE_IMAGE already imported (tar $digest)"
    else
        pm import --quiet \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change "LABEL base-tar=$digest" \
            --change 'CMD ["/bin/bash"]' \
            "$tar" "$BASE_IMAGE" >/dev/null
        log "imported $tar as $BASE_IMAGE"
    fi
    pm run --rm --network none "$BASE_IMAGE" python3 -c 'import sys, venv, ensurepip; print("base python", sys.version.split()[0])' \
        || die "the base has no python3 with venv"
}

# --- 3. build-cpu ------------------------------------------------------------------------------
torch_wheel() {  # the CPU torch wheel on this machine, linked into the build context
    local wheel=${TORCH_WHEEL:-}
    if [ -z "$wheel" ]; then
        wheel=$(find /opt/wheels /opt/pypi/simple /opt/pypi-more/simple -maxdepth 2 \
                    -name "torch-$TORCH_VERSION*-cp311-cp311-*linux*x86_64.whl" 2>/dev/null | sort | head -n1 || true)
    fi
    [ -n "$wheel" ] && [ -f "$wheel" ] || die "no torch $TORCH_VERSION cp311 wheel found under /opt/wheels or the local indexes: set TORCH_WHEEL=/path/to/torch-$TORCH_VERSION+cpu-...whl"
    rm -rf "${ROOT:?}/$WHEELS_REL"; mkdir -p "$ROOT/$WHEELS_REL"
    ln "$wheel" "$ROOT/$WHEELS_REL/" 2>/dev/null || cp "$wheel" "$ROOT/$WHEELS_REL/"
    log "torch wheel: $wheel -> $WHEELS_REL/ (build arg TORCH_WHEELS=$WHEELS_REL)"
}

build() {  # build DOCKERFILE TAG [build args...]
    local dockerfile=$1 tag=$2 logfile pruned
    shift 2
    logfile=$CACHE/build-$(basename "$dockerfile").log
    : > "$logfile"
    # the deps stage (torch and the dependencies: minutes) gets a tag of its own, so that pruning the
    # dangling images of earlier builds below keeps it as the next build's cache
    podman_build "$dockerfile" "$logfile" --target deps -t "$tag-deps" "$@"
    podman_build "$dockerfile" "$logfile" -t "$tag" "$@"
    log "built $tag: $(pm image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
    pruned=$(pm image prune -f 2>/dev/null | wc -l)
    [ "$pruned" -gt 0 ] && log "removed $pruned dangling image(s) of earlier builds"
    return 0
}

podman_build() {  # podman_build DOCKERFILE LOGFILE [podman build args...]
    local dockerfile=$1 logfile=$2 status trust=()
    shift 2
    log "podman build --isolation chroot -f $dockerfile $*  (log: $logfile)"
    # RUN steps trust what this machine trusts (its CA bundle: a TLS-inspecting proxy's CA, if any),
    # through mounts that last only while each RUN step runs: nothing of it stays in the image.
    # The context is the repository root: the ignore file keeps .venv, .cache (but the wheels) and .git out.
    if [ -s "$HOST_CA_BUNDLE" ]; then
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$CACHE/pip.conf"
        trust=(--volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" --volume "$CACHE/pip.conf:/etc/pip.conf:ro")
    fi
    set +e
    nice -n "$NICE" podman "${PODMAN_ARGS[@]}" build --isolation chroot --format docker --pull=never --layers "${trust[@]}" \
        --ignorefile "$CACHE/context.ignore" -f "$ROOT/$dockerfile" "$@" "$ROOT" 2>&1 \
        | tee -a "$logfile" | grep --line-buffered -E '^(\[[0-9]+/[0-9]+] )?(STEP [0-9]|COMMIT)' \
        | while IFS= read -r line; do printf '    %s %s\n' "$(date +%H:%M:%S)" "${line:0:150}"; done
    status=${PIPESTATUS[0]}
    set -e
    [ "$status" = 0 ] || { tail -n 40 "$logfile" >&2; die "building $dockerfile failed (podman build exit $status, log: $logfile)"; }
}

context_ignore() {
    cat > "$CACHE/context.ignore" <<EOF
.git
.venv
.cache
!$WHEELS_REL
**/__pycache__
.pytest_cache
EOF
}

build_cpu() {
    torch_wheel
    context_ignore
    build docker/Dockerfile "$CPU_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_WHEELS=$WHEELS_REL"
}

# --- 4. run-cpu --------------------------------------------------------------------------------
no_systemd_noise() { grep -v 'unable to get systemd connection' >&2 || true; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run_cpu() {
    local cmd entrypoint user models port network secret url deadline code logs
    cmd=$(pm image inspect --format '{{json .Config.Cmd}}' "$CPU_IMAGE")
    entrypoint=$(pm image inspect --format '{{json .Config.Entrypoint}}' "$CPU_IMAGE")
    user=$(pm image inspect --format '{{.Config.User}}' "$CPU_IMAGE")
    log "the image's command: entrypoint $entrypoint, cmd $cmd, user $user"
    models=$(mktemp -d /tmp/ml-backend-check-models.XXXXXX)
    chmod 0777 "$models"  # the image's user (not root) writes there
    secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    # the image's command listens on 9090 inside the container: published on a free port of 127.0.0.1
    port=$(free_port)
    network=(--network bridge -p "127.0.0.1:$port:9090")
    if ! pm network ls >/dev/null 2>&1; then network=(--network host); port=9090; fi
    url=http://127.0.0.1:$port
    RUN_MODELS=$models
    trap 'cleanup_run' EXIT
    # no command given: podman runs the image's ENTRYPOINT/CMD as its USER
    # podman's healthcheck timer needs systemd (none here: its complaints are filtered out); the
    # image's HEALTHCHECK command is run once below instead
    WEBHOOK_SECRET=$secret pm run -d --name "$CONTAINER" "${network[@]}" --health-interval disable \
        -v "$models:/data/models" -e MODEL_DIR=/data/models -e WEBHOOK_SECRET \
        -e WORKERS=1 -e THREADS=2 -e LOG_LEVEL=INFO "$CPU_IMAGE" >/dev/null 2> >(no_systemd_noise) \
        || die "podman run failed"
    log "started container $CONTAINER ($url, MODEL_DIR=/data/models on $models)"
    deadline=$(( $(date +%s) + 180 ))
    until curl -fsS -o /dev/null "$url/health" 2>/dev/null; do
        if [ "$(pm inspect --format '{{.State.Running}}' "$CONTAINER")" != true ]; then
            pm logs "$CONTAINER" 2>&1 | tail -n 40 >&2; die "the container exited before /health answered"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { pm logs "$CONTAINER" 2>&1 | tail -n 40 >&2; die "/health did not answer in 180s"; }
        sleep 1
    done
    log "/health answers after $(( $(date +%s) - deadline + 180 ))s"
    pm healthcheck run "$CONTAINER" >/dev/null || die "the image's HEALTHCHECK command fails in the container"
    log "the image's HEALTHCHECK command passes: $(pm image inspect --format '{{json .Config.Healthcheck.Test}}' "$CPU_IMAGE" | cut -c1-90)..."
    log "HTTP checks:"
    WEBHOOK_SECRET=$secret python3 "$ROOT/scripts/container_smoke.py" --url "$url" --secret-env WEBHOOK_SECRET \
        --label-config "$ROOT/label_config/image_classification_evidence.xml" --train-timeout "${TRAIN_TIMEOUT:-300}" \
        || { pm logs "$CONTAINER" 2>&1 | tail -n 40 >&2; die "HTTP checks failed"; }
    ls "$models/projects/2/" >/dev/null 2>&1 || die "nothing written under MODEL_DIR ($models)"
    log "MODEL_DIR holds: $(cd "$models" && find . -maxdepth 3 -mindepth 2 | sort | head -n 8 | tr '\n' ' ')"
    if [ "${KEEP_RUNNING:-0}" = 1 ]; then
        log "KEEP_RUNNING=1: $CONTAINER stays up at $url (podman ${PODMAN_ARGS[*]} stop $CONTAINER)"
        trap - EXIT; return
    fi
    log "stopping (SIGTERM, 30s grace)"
    pm stop --time 30 "$CONTAINER" >/dev/null 2> >(no_systemd_noise)
    code=$(pm inspect --format '{{.State.ExitCode}}' "$CONTAINER")
    logs=$(pm logs "$CONTAINER" 2>&1)
    printf '%s\n' "$logs" | tail -n 6 | sed 's/^/    /'
    [ "$code" = 0 ] || die "the container exited with $code after SIGTERM"
    grep -q "Granian shutdown completed" <<<"$logs" || die "no clean granian shutdown in the logs"
    log "stopped cleanly (exit code 0)"
    cleanup_run; trap - EXIT
}

cleanup_run() {
    pm rm -f --time 5 "$CONTAINER" >/dev/null 2>&1 || true
    [ -n "${RUN_MODELS:-}" ] && rm -rf "$RUN_MODELS"
    RUN_MODELS=
}

# --- 5. build-gpu ------------------------------------------------------------------------------
build_gpu() {
    local args=(--build-arg "CUDA_IMAGE=$BASE_IMAGE")
    if curl -fsS -o /dev/null --max-time 15 "$GPU_TORCH_INDEX/torch/" 2>/dev/null; then
        log "the CUDA torch index $GPU_TORCH_INDEX answers: the GPU image gets its CUDA torch"
        GPU_NOTE="built with CUDA torch from $GPU_TORCH_INDEX on the $SUITE base (not the CUDA base image); not run: it needs a GPU"
    else
        log "NOTE: the CUDA torch index $GPU_TORCH_INDEX cannot be reached from this machine"
        log "      (download.pytorch.org: $(curl -sS -o /dev/null --max-time 15 "$GPU_TORCH_INDEX/torch/" 2>&1 | head -n1 || true))"
        log "      so the GPU image is built with the local CPU torch wheel (TORCH_WHEELS=$WHEELS_REL):"
        log "      that checks every other step of docker/Dockerfile.gpu; the CUDA build of torch is NOT checked here"
        [ -d "$ROOT/$WHEELS_REL" ] || torch_wheel
        args+=(--build-arg "TORCH_WHEELS=$WHEELS_REL")
        GPU_NOTE="built with the local CPU torch wheel (CUDA torch index unreachable here) on the $SUITE base; not run: it needs a GPU"
    fi
    context_ignore
    build docker/Dockerfile.gpu "$GPU_IMAGE" "${args[@]}"
    pm run --rm --network none --no-healthcheck --entrypoint python "$GPU_IMAGE" -c \
        'import torch, ml_backend; print("gpu image: torch", torch.__version__, "cuda build:", torch.version.cuda, "cuda available:", torch.cuda.is_available())' \
        || die "the GPU image does not import torch and ml_backend"
    log "GPU image: $GPU_NOTE"
}

clean() {
    if command -v podman >/dev/null 2>&1 && [ -d "$CACHE/storage" ]; then
        podman_setup >/dev/null
        pm rm --all --force >/dev/null 2>&1 || true
    fi
    # nothing of it may stay mounted before it is removed
    findmnt -rn -o TARGET | { grep -F "$CACHE/" || true; } | sort -r | while IFS= read -r m; do umount "$m" || true; done
    rm -rf "$CACHE"
    log "removed $CACHE"
}

# --- main --------------------------------------------------------------------------------------
stages=${*:-${STAGES:-tools base build-cpu run-cpu build-gpu}}
[ "$stages" = clean ] && { clean; exit 0; }
mkdir -p "$CACHE/base"
GPU_NOTE="not built"
command -v podman >/dev/null 2>&1 && podman_setup
for s in $stages; do
    case $s in
        tools) stage tools tools ;;
        base) stage base base ;;
        build-cpu) stage build-cpu build_cpu ;;
        run-cpu) stage run-cpu run_cpu ;;
        build-gpu) stage build-gpu build_gpu ;;
        *) die "unknown stage $s (tools base build-cpu run-cpu build-gpu, or clean)" ;;
    esac
done
log "all passed in $(( $(date +%s) - STARTED ))s:"
for t in "${TIMINGS[@]}"; do log "  $t"; done
log "  GPU image: $GPU_NOTE"
