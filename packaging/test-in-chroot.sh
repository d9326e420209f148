#!/usr/bin/env bash
# The full package test, one command (`make deb-test`): build both .debs (lintian must pass
# with only the documented overrides), then in a Debian bookworm root made with debootstrap:
#
#   install the previous build -> appliance --version, config check, the built-in model runs,
#   systemd-analyze verify of every unit (no stderr), security exposure <= 5.0, user, units
#   enabled -> edit /etc/appliance/edge.toml -> upgrade to this build without a prompt, the
#   edit kept -> remove (config kept) -> purge -> nothing left behind but the system user.
#
# The "previous build" is this build repacked with a lower version and a different example
# config (so the upgrade meets a changed example next to a locally edited file, the case that
# stops at a conffile prompt when /etc files are conffiles).
# Needs root (chroot) and the network for the first debootstrap; the base root and the compiled
# llama-cpp-python wheel are cached in $APPLIANCE_DEB_CACHE (default ~/.cache/appliance-deb).
# Prints the time of each phase. Options: --skip-build (use dist/deb as it is).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${APPLIANCE_DEB_CACHE:-$HOME/.cache/appliance-deb}
BASE=$CACHE/roots/bookworm-base
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SKIP_BUILD=0
[ "${1:-}" = "--skip-build" ] && SKIP_BUILD=1

[ "$(id -u)" -eq 0 ] || { echo "test-in-chroot: needs root (chroot, mounts)" >&2; exit 1; }
START=$(date +%s)
phase_start=$START
phase() {  # print how long the previous phase took, start the next
    local now; now=$(date +%s)
    printf 'test-in-chroot: %-28s %4d s\n' "$PHASE" $((now - phase_start)) >&2
    PHASE=$1; phase_start=$now
}
fail() { echo "test-in-chroot: FAIL: $*" >&2; exit 1; }
PHASE="prerequisites"

missing=()
for pkg in debootstrap lintian dpkg-dev libsystemd-dev pkg-config cmake build-essential python3-venv systemd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

phase "build + lintian"
if ((SKIP_BUILD == 0)); then
    packaging/build-deb.sh >/dev/null
fi
newest() { find dist/deb -name "$1" -printf '%T@ %p\n' | sort -nr | head -1 | cut -d' ' -f2; }
DEB=$(newest 'appliance_*.deb')
MODEL_DEB=$(newest 'appliance-model-smollm2_*_all.deb')
if [ -z "$DEB" ] || [ -z "$MODEL_DEB" ]; then fail "no packages in dist/deb"; fi
VERSION=$(dpkg-deb -f "$DEB" Version)

phase "previous build (repack)"
WORK=$ROOT/build/deb-test
rm -rf "$WORK"
mkdir -p "$WORK"
dpkg-deb -R "$DEB" "$WORK/prev"
PREV_VERSION="${VERSION%-*}-0~prev"
sed -i "s/^Version: .*/Version: $PREV_VERSION/" "$WORK/prev/DEBIAN/control"
sed -i '1i # (example of the previous build)' "$WORK/prev/usr/share/appliance/edge.toml"
(cd "$WORK/prev" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum > DEBIAN/md5sums)
PREV_DEB=$WORK/appliance_${PREV_VERSION}_prev.deb
dpkg-deb --root-owner-group -Zgzip -z1 --build "$WORK/prev" "$PREV_DEB" >/dev/null
rm -rf "$WORK/prev"

phase "bookworm root"
if [ ! -d "$BASE" ]; then
    mkdir -p "$(dirname "$BASE")"
    rm -rf "$BASE.tmp"
    debootstrap --variant=minbase \
        --include=python3,adduser,systemd,libgomp1,libstdc++6,ca-certificates \
        bookworm "$BASE.tmp" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    mv "$BASE.tmp" "$BASE"
fi
R=$WORK/root
cp -a "$BASE" "$R"
mounted=()
cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
mount -t proc proc "$R/proc" && mounted+=("$R/proc")
mount --bind /dev "$R/dev" && mounted+=("$R/dev")
in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }

phase "dependencies (apt)"
# What `apt install ./appliance_*.deb` would pull in, installed before the snapshot so that
# the purge check below sees only what the package itself leaves.
cp /etc/resolv.conf "$R/etc/resolv.conf"
mapfile -t deps < <(dpkg-deb -f "$DEB" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep .)
in_root apt-get update -qq >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; fail "apt-get update"; }
in_root apt-get install -y -qq --no-install-recommends "${deps[@]}" >>"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log" >&2; fail "installing the dependencies"; }
snapshot() {  # every path in the root that a package could leave behind
    in_root find / -xdev \( -path /proc -o -path /dev -o -path /sys -o -path /tmp \
        -o -path /var/lib/dpkg -o -path /var/cache/debconf -o -path /var/log -o -path /run \) -prune \
        -o -print | LC_ALL=C sort
}
snapshot > "$WORK/before.txt"
cp "$PREV_DEB" "$DEB" "$MODEL_DEB" "$R/tmp/"

phase "install previous"
in_root dpkg -i "/tmp/$(basename "$PREV_DEB")" "/tmp/$(basename "$MODEL_DEB")" </dev/null \
    >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "install"; }
grep -q "created /etc/appliance/edge.toml from the example" "$WORK/install.log" \
    || fail "postinst did not create /etc/appliance/edge.toml"

phase "checks on the installed root"
# Every extension module of the venv and llama.cpp's libraries load, with what they pull in
# (a damaged ELF, e.g. by strip, fails here).
in_root /usr/lib/appliance/venv/bin/python3 - <<'EOF' || fail "native modules of the venv do not load"
import ctypes, pathlib, sys
bad = []
site = pathlib.Path(sys.prefix, "lib")
paths = [*site.rglob("*.cpython-*.so"), *site.rglob("*.abi3.so"), *site.rglob("llama_cpp/lib/*.so")]
for path in sorted(paths):
    if path.is_file():
        try:
            ctypes.CDLL(str(path))
        except OSError as exc:
            bad.append(f"{path}: {exc}")
print("\n".join(bad), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
[ -n "$(in_root appliance --version)" ] || fail "appliance --version"
in_root appliance config check /etc/appliance/edge.toml || fail "config check of the created edge.toml"
in_root cp /usr/share/appliance/aggregator.toml /tmp/aggregator.toml
in_root appliance config check /tmp/aggregator.toml || fail "config check of the aggregator example"
[[ $(in_root appliance model info builtin) == *apache-2.0* ]] || fail "the built-in model from /usr/share/appliance/models"
in_root appliance generate --model builtin --seed 1 --max-tokens 16 "The conveyor belt" >"$WORK/generate.txt" \
    || fail "llama.cpp (GGML_NATIVE=OFF) did not run the built-in model"
# LoRA training goes through ggml-opt in the bundled libggml-base (ctypes): train a tiny model.
in_root appliance model make-tiny /tmp/tiny.gguf --quant f32 >/dev/null || fail "make-tiny"
for i in $(seq 1 24); do
    echo "{\"text\": \"line $i: motor $((i % 3)) bearing at $((40 + i)) C, belt speed nominal.\"}"
done > "$R/tmp/plant.jsonl"
in_root appliance train --model /tmp/tiny.gguf --data /tmp/plant.jsonl --out /tmp/a.gguf \
    --epochs 1 --cache-dir /tmp/cache >"$WORK/train.log" 2>&1 \
    || { tail -20 "$WORK/train.log" >&2; fail "appliance train in the installed venv"; }
[ -s "$R/tmp/a.gguf" ] || fail "training wrote no adapter"
for unit in appliance-edge.service appliance-aggregator.service appliance-smart.service appliance-smart.timer; do
    err=$(in_root systemd-analyze verify "/lib/systemd/system/$unit" 2>&1 >/dev/null) || fail "verify $unit: $err"
    [ -z "$err" ] || fail "systemd-analyze verify $unit wrote: $err"
done
for unit in appliance-edge.service appliance-aggregator.service appliance-smart.service; do
    score=$(in_root systemd-analyze security --offline=true "/lib/systemd/system/$unit" 2>/dev/null \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 5.0) }' || fail "$unit exposure '$score' > 5.0"
    echo "test-in-chroot: $unit exposure $score" >&2
done
[[ $(in_root getent passwd appliance) == *:/var/lib/appliance:* ]] || fail "system user appliance"
[ "$(in_root stat -c %U /var/lib/appliance)" = appliance ] || fail "/var/lib/appliance owner"
[ -L "$R/etc/systemd/system/multi-user.target.wants/appliance-edge.service" ] || fail "edge unit not enabled"
[ -L "$R/etc/systemd/system/timers.target.wants/appliance-smart.timer" ] || fail "smart timer not enabled"
[[ $(in_root dpkg -L appliance) == *__pycache__* ]] && fail "the package ships __pycache__"
[ -n "$(find "$R/usr/lib/appliance/venv/lib" -name '*.pyc' -print -quit)" ] || fail "postinst compiled no byte code"
leaked=$(grep -rlI "$ROOT/build" "$R/usr/lib/appliance" || true)
[ -z "$leaked" ] || fail "build paths inside the venv: $leaked"
# Run as the daemon user would, from the private venv only (no system site-packages).
in_root python3 -c 'import appliance' 2>/dev/null && fail "appliance leaked into the system Python"

phase "upgrade, config edited"
sed -i 's/^node_id = "box-01"/node_id = "line3-box"   # edited here/' "$R/etc/appliance/edge.toml"
in_root dpkg -i "/tmp/$(basename "$DEB")" </dev/null >"$WORK/upgrade.log" 2>&1 \
    || { cat "$WORK/upgrade.log" >&2; fail "upgrade"; }
grep -qi "configuration file" "$WORK/upgrade.log" && fail "the upgrade talked about a conffile"
grep -q '^node_id = "line3-box"   # edited here' "$R/etc/appliance/edge.toml" || fail "the local edit was lost"
# shellcheck disable=SC2016
[ "$(in_root dpkg-query -W -f='${Version}' appliance)" = "$VERSION" ] || fail "not upgraded to $VERSION"
in_root appliance config check /etc/appliance/edge.toml || fail "config check after the upgrade"

phase "remove, then purge"
in_root dpkg -r appliance appliance-model-smollm2 </dev/null >"$WORK/remove.log" 2>&1 \
    || { cat "$WORK/remove.log" >&2; fail "remove"; }
[ -f "$R/etc/appliance/edge.toml" ] || fail "remove (not purge) deleted the configuration"
[ ! -e "$R/usr/lib/appliance" ] || fail "remove left /usr/lib/appliance: $(find "$R/usr/lib/appliance" | head -5)"
in_root dpkg -P appliance appliance-model-smollm2 </dev/null >"$WORK/purge.log" 2>&1 \
    || { cat "$WORK/purge.log" >&2; fail "purge"; }
for path in /etc/appliance /var/lib/appliance /var/log/appliance /usr/share/appliance \
    /etc/systemd/system/multi-user.target.wants/appliance-edge.service; do
    if [ -e "$R$path" ] || [ -L "$R$path" ]; then fail "purge left $path"; fi
done
if grep -rqs appliance "$R/var/lib/systemd/deb-systemd-helper-enabled" "$R/var/lib/systemd/deb-systemd-helper-masked"; then
    fail "purge left deb-systemd-helper state"
fi
snapshot > "$WORK/after.txt"
# adduser keeps backups of the files it edits; the user itself stays (Debian practice).
left=$(LC_ALL=C comm -13 "$WORK/before.txt" "$WORK/after.txt" \
    | grep -vxE '/etc/(passwd|group|shadow|gshadow)-' || true)
[ -z "$left" ] || fail "purge left behind: $left"
gone=$(LC_ALL=C comm -23 "$WORK/before.txt" "$WORK/after.txt")
[ -z "$gone" ] || fail "install/purge deleted files of the base system: $gone"

phase "done"
echo "test-in-chroot: PASS ($DEB, $(du -h "$DEB" | cut -f1); total $(($(date +%s) - START)) s)" >&2
