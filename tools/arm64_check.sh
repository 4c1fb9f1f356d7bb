#!/usr/bin/env bash
# glmcpu on aarch64, under emulation: on an x86-64 Debian machine, as root, build (or reuse) an
# arm64 Debian root with debootstrap + qemu-user-static (binfmt), install the project there with
# pip exactly as README.md's "Set up" says, and run the correctness tests there:
#   - golden logits of every family (ChatGLM-6B, ChatGLM2, ChatGLM3, GLM-4, and the HF-native
#     glm-4-9b-chat-hf / GLM-Edge / GLM-4-0414) in f32, f16 and q4_0,
#   - the quantization kernels against the numpy reference (and the references against ggml's),
#   - the f32/f16 kernels and their numerical extremes (NaN/inf, overflow), the tokenizers
#     (sentencepiece, ice_text, tiktoken, tokenizer.json) and chat templates,
#   - the built-in demo model generating with a fixed seed (and greedily) exactly the text the same
#     command prints on this x86-64 host, computed in the same run (AVX2 and portable kernels).
# aarch64 runs the portable numba kernels. Under qemu numba compiles about 10x slower than
# natively, hence a subset of the test suite (--full runs all of it). Speed is not measured here:
# emulated timings say nothing about ARM hardware.
#
# The project tested is a `git clone` of REPO at its committed HEAD (uncommitted changes are not
# tested), copied into the root together with REPO/../shared (golden data and tokenizers, which
# the tests read from ../shared). Reruns reuse a valid root (--fresh rebuilds it); the virtualenv,
# the clone and numba's cache are made anew on every run. Needs: root, network (Debian mirror for
# the root, PyPI for pip), ~2 GB in /var/tmp. Prints a summary; exits non-zero on any failure.
#
# usage: tools/arm64_check.sh [--fresh] [--full] [--root DIR] [--mirror URL] [--shared DIR] [REPO]
set -uo pipefail

usage() { sed -n '2,/^# usage/p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT=${GLMCPU_ARM64_ROOT:-/var/tmp/glmcpu-arm64}
FRESH=0 FULL=0 MIRROR="" SHARED="" REPO=""
SUITE=bookworm
while [ $# -gt 0 ]; do
    case "$1" in
        --fresh) FRESH=1 ;;
        --full) FULL=1 ;;
        --root) ROOT=$2; shift ;;
        --mirror) MIRROR=$2; shift ;;
        --shared) SHARED=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "arm64_check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) REPO=$1 ;;
    esac
    shift
done

die() { echo "arm64_check: error: $*" >&2; exit 1; }
say() { printf '\n=== %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and binfmt need it)"
[ "$(uname -m)" = x86_64 ] || die "this is for an x86-64 host (uname -m: $(uname -m))"
command -v apt-get >/dev/null || die "needs a Debian (apt) host"
command -v python3 >/dev/null || die "needs python3 on the host (the x86-64 reference run)"
command -v git >/dev/null || die "needs git"

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=${REPO:-$(git -C "$SCRIPT_DIR" rev-parse --show-toplevel 2>/dev/null)} || true
[ -n "$REPO" ] && REPO=$(cd "$REPO" && git rev-parse --show-toplevel 2>/dev/null) \
    || die "not a git repository: ${REPO:-$SCRIPT_DIR} (give the glmcpu repo as the argument)"
SHARED=${SHARED:-$(dirname "$REPO")/shared}
[ -d "$SHARED/golden" ] && [ -d "$SHARED/tokenizers" ] \
    || die "$SHARED has no golden/ and tokenizers/ (the tests read ../shared beside the repo; --shared DIR)"
ROOT=$(realpath -m "$ROOT")
case "$ROOT" in /|/var|/var/tmp|/tmp|/usr|/home|/root) die "refusing root dir $ROOT" ;; esac
case "$ROOT/" in "$REPO"/*) die "the root must be outside the repo ($ROOT)" ;; esac
HOSTDIR=$ROOT.host          # x86-64 side: clone, virtualenv, numba cache, logs
WORK=/opt/glmcpu-check      # inside the root
mkdir -p "$HOSTDIR"

# one run at a time per root; everything printed also goes to a log
exec 9>"$HOSTDIR/lock"
flock -n 9 || die "another arm64_check run holds $HOSTDIR/lock"
LOG=$HOSTDIR/last-run.log
exec > >(tee "$LOG") 2>&1

T0=$(date +%s)
declare -A DUR DEMO AT
FAILS=()
phase_start() { PH=$1; PT=$(date +%s); say "$2"; }
phase_end() { DUR[$PH]=$(( $(date +%s) - PT )); }
fail() { FAILS+=("$*"); echo "FAILED: $*"; }
# CPU seconds (user + sys) of all waited-for children so far: wall time alone says little on a
# shared machine
# (sets CPU; `times` must run in this shell, not in a $(...) subshell, which has no children)
child_cpu() {
    times > "$HOSTDIR/times.txt"
    CPU=$(tail -1 "$HOSTDIR/times.txt" | awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] }; printf "%d", s }')
}
mins() { printf '%dm%02ds' $(( $1 / 60 )) $(( $1 % 60 )); }

# no mounts may remain under the root before it is deleted (the chroot runs in its own mount
# namespace, so none should ever exist)
mounted_under() { awk -v r="$1" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts; }

# ------------------------------------------------------------------ host tools, binfmt, mirror
phase_start tools "host: qemu-user-static, debootstrap, binfmt"
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    apt-get update -q && apt-get install -y -q qemu-user-static debootstrap binfmt-support \
        || die "apt-get install qemu-user-static debootstrap binfmt-support failed"
fi
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
BINFMT=/proc/sys/fs/binfmt_misc/qemu-aarch64
[ -f $BINFMT ] && head -1 $BINFMT | grep -q enabled || die "binfmt entry qemu-aarch64 not enabled ($BINFMT)"
# F (fix binary): the kernel keeps the interpreter open, so the root needs no copy of qemu
grep -q '^flags:.*F' $BINFMT || die "binfmt qemu-aarch64 lacks the F flag; reinstall qemu-user-static"
QEMU_VERSION=$(qemu-aarch64-static --version | head -1)
echo "$QEMU_VERSION"

if [ -z "$MIRROR" ]; then
    # the Debian mirror apt already uses: first deb source of a main suite (not -security/-updates)
    MIRROR=$(python3 - <<'EOF'
import glob, re
def main_suite(uri, suites):
    return "debian" in uri and "security" not in uri and any("-" not in s and "/" not in s for s in suites)
found = []
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line.split("#", 1)[0])
        if m and main_suite(m.group(1), [m.group(2)]):
            found.append(m.group(1))
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        f = {}
        for line in stanza.splitlines():
            if line.strip().startswith("#") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            f[k.strip().lower()] = v.split()
        if "deb" in f.get("types", []) and f.get("enabled", ["yes"])[0] != "no":
            for uri in f.get("uris", []):
                if main_suite(uri, f.get("suites", [])):
                    found.append(uri)
print(found[0] if found else "http://deb.debian.org/debian")
EOF
)
fi
echo "Debian mirror: $MIRROR"
phase_end

# ------------------------------------------------------------------ the arm64 root
root_valid() {
    [ -x "$ROOT/usr/bin/python3" ] && [ ! -e "$ROOT/debootstrap" ] || return 1
    [ "$(chroot "$ROOT" /usr/bin/python3 -c 'import platform, venv, ensurepip; print(platform.machine())' \
         2>/dev/null)" = aarch64 ]
}
phase_start root "arm64 root: $ROOT"
if [ $FRESH = 0 ] && root_valid; then
    echo "reusing the existing root (--fresh rebuilds it)"
else
    [ -n "$(mounted_under "$ROOT")" ] && die "something is mounted under $ROOT: $(mounted_under "$ROOT")"
    if [ -e "$ROOT" ]; then echo "removing $ROOT"; rm -rf --one-file-system "$ROOT"; fi
    echo "debootstrap --arch=arm64 --variant=minbase $SUITE (takes 5-15 minutes)"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip \
        "$SUITE" "$ROOT" "$MIRROR" > "$HOSTDIR/debootstrap.log" 2>&1 \
        || { tail -20 "$HOSTDIR/debootstrap.log"; die "debootstrap failed (log: $HOSTDIR/debootstrap.log)"; }
    root_valid || die "debootstrap finished but $ROOT does not run aarch64 python3"
fi
DEBIAN_VERSION=$(cat "$ROOT/etc/debian_version")
echo "Debian $DEBIAN_VERSION arm64"
phase_end

# ------------------------------------------------------------------ the source: git HEAD
phase_start source "source: git clone of $REPO at HEAD"
COMMIT=$(git -C "$REPO" rev-parse HEAD) || die "cannot read HEAD of $REPO"
COMMIT_LINE=$(git -C "$REPO" log -1 --format='%h %cd %s' --date=short | cut -c1-100)
echo "commit $COMMIT_LINE"
[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] \
    && echo "note: $REPO has uncommitted changes; they are not tested"
rm -rf "$ROOT$WORK" "$HOSTDIR/glmcpu"
mkdir -p "$ROOT$WORK/out"
git clone -q --no-hardlinks "$REPO" "$ROOT$WORK/glmcpu" && git -C "$ROOT$WORK/glmcpu" checkout -q "$COMMIT" \
    || die "git clone of $REPO failed"
git clone -q --no-hardlinks "$REPO" "$HOSTDIR/glmcpu" && git -C "$HOSTDIR/glmcpu" checkout -q "$COMMIT" \
    || die "git clone of $REPO failed"
mkdir -p "$ROOT$WORK/shared"
cp -a "$SHARED/golden" "$SHARED/tokenizers" "$ROOT$WORK/shared/"

# README.md "Set up": exactly two ```sh commands (tests/test_readme.py checks the same):
# 1. install + demo run, 2. install the test extras && run pytest.
mapfile -t README_CMDS < <(python3 - "$ROOT$WORK/glmcpu/README.md" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
for c in re.findall(r"```sh\n(.*?)\n```", setup, re.S):
    print(c)
EOF
)
[ ${#README_CMDS[@]} = 2 ] || die "README.md 'Set up' does not have the two one-line sh commands this script runs"
INSTALL_CMD=${README_CMDS[0]}
TEST_INSTALL_CMD=${README_CMDS[1]%%&&*}
TEST_INSTALL_CMD=${TEST_INSTALL_CMD%"${TEST_INSTALL_CMD##*[! ]}"}   # trailing blanks
PYTEST_CMD=${README_CMDS[1]#*&& }
case "$PYTEST_CMD" in "python -m pytest"*) ;; *) die "README's test command is not 'pip ... && python -m pytest ...'" ;; esac
echo "README step 1: $INSTALL_CMD"
echo "README step 2: $TEST_INSTALL_CMD && $PYTEST_CMD"
phase_end

# the demo commands compared between x86-64 and aarch64 (text on stdout, byte for byte)
DEMO_PROMPT="床前明月光"
DEMO_SAMPLED=(run -p "$DEMO_PROMPT" --seed 0 -n 32)            # official sampling defaults, fixed seed
DEMO_GREEDY=(run -p "$DEMO_PROMPT" --temp 0 -n 32)

# the correctness subset: what numba compiles and numpy computes on this ISA (kernels, numerics,
# every golden family), and the tokenizers; test files missing at the tested commit are left out
# (the summary lists the files that ran). --full runs the whole suite.
SUBSET_FILES=""
for f in test_golden test_golden_hf test_chatglm1 test_quant test_kquants test_kernels test_numerics \
         test_tokenizer test_tokenizer_hf test_demo; do
    [ -f "$ROOT$WORK/glmcpu/tests/$f.py" ] && SUBSET_FILES+=" tests/$f.py"
done
# their base names: the summary checks a required test only if its file exists at the commit
REQUIRED_FILES=${SUBSET_FILES//tests\//}
SUBSET_K="test_prefill_and_decode_match_official or test_golden_prefill_and_decode \
or test_hf_native_matches_official or (test_hf_native_quantized_equals_reference and q4_0) \
or (test_quantized_golden_equals_reference_forward and q4_0 and 32) \
or (test_quantized_equals_reference_forward and q4_0) \
or test_kernels_equal_reference or test_group_32_bytes_equal_ggml_reference or test_kquants \
or (test_kernels and not compiled_once) or test_numerics or test_tokenizer or test_shipped_file"

# ------------------------------------------------------------------ x86-64 reference (host)
phase_start host "x86-64 host: README step 1 in a fresh virtualenv, the demo text"
(
    set -e
    cd "$HOSTDIR/glmcpu"
    rm -rf "$HOSTDIR/venv" "$HOSTDIR/numba-cache"
    python3 -m venv "$HOSTDIR/venv"
    . "$HOSTDIR/venv/bin/activate"
    export NUMBA_CACHE_DIR=$HOSTDIR/numba-cache
    bash -c "$INSTALL_CMD" > "$HOSTDIR/readme-step1.txt"
    glmcpu "${DEMO_SAMPLED[@]}" > "$HOSTDIR/demo-sampled.txt"
    glmcpu "${DEMO_GREEDY[@]}" > "$HOSTDIR/demo-greedy.txt"
    GLMCPU_SIMD=off glmcpu "${DEMO_SAMPLED[@]}" > "$HOSTDIR/demo-sampled-portable.txt"
    GLMCPU_SIMD=off glmcpu "${DEMO_GREEDY[@]}" > "$HOSTDIR/demo-greedy-portable.txt"
    python -c 'import sys, numpy, numba, glmcpu.kernels as K
print(sys.version.split()[0], numpy.__version__, numba.__version__, "avx2" if K.avx2.available() else "portable")' \
        > "$HOSTDIR/versions.txt"
) || fail "x86-64 host: install or demo run failed"
[ -f "$HOSTDIR/versions.txt" ] && read -r H_PY H_NP H_NB H_K4 < "$HOSTDIR/versions.txt"
echo "host: python ${H_PY:-?} numpy ${H_NP:-?} numba ${H_NB:-?}, 4-bit kernels ${H_K4:-?}"
for k in sampled greedy; do
    cmp -s "$HOSTDIR/demo-$k.txt" "$HOSTDIR/demo-$k-portable.txt" \
        || fail "x86-64: demo ($k) text differs between the AVX2 and the portable kernels"
done
phase_end

# ------------------------------------------------------------------ aarch64 (chroot under qemu)
cat > "$ROOT$WORK/in-root.sh" <<EOF
#!/bin/bash
# runs inside the arm64 root (written by tools/arm64_check.sh)
set -uo pipefail
OUT=$WORK/out
stamp() { echo "\$1 \$(date +%s)" >> \$OUT/times.txt; printf '\n--- %s  [%s]\n' "\$1" "\$(date -u +%H:%M:%S)"; }
cd $WORK/glmcpu
rm -rf $WORK/venv /root/.cache/glmcpu /tmp/pytest-of-*
echo "uname -m: \$(uname -m)"
stamp venv
python3 -m venv $WORK/venv && . $WORK/venv/bin/activate || { echo venv > \$OUT/failed; exit 1; }
stamp readme-step1
# README "Set up", step 1, verbatim
bash -c $(printf %q "$INSTALL_CMD") > \$OUT/readme-step1.txt || { echo readme-step1 > \$OUT/failed; exit 1; }
cat \$OUT/readme-step1.txt
stamp demo
glmcpu $(printf '%q ' "${DEMO_SAMPLED[@]}") > \$OUT/demo-sampled.txt || echo demo-sampled >> \$OUT/failed
glmcpu $(printf '%q ' "${DEMO_GREEDY[@]}") > \$OUT/demo-greedy.txt || echo demo-greedy >> \$OUT/failed
python -c 'import sys, platform, numpy, numba, glmcpu.kernels as K
print(platform.machine(), sys.version.split()[0], numpy.__version__, numba.__version__, "avx2" if K.avx2.available() else "portable")' \
    > \$OUT/versions.txt
stamp readme-step2-install
# README "Set up", step 2: its install command verbatim, then its pytest command on the subset
bash -c $(printf %q "$TEST_INSTALL_CMD") || { echo readme-step2-install >> \$OUT/failed; exit 1; }
stamp pytest
EOF
if [ $FULL = 1 ]; then
    echo "$PYTEST_CMD -p no:cacheprovider -rfE --junitxml=\$OUT/junit.xml" >> "$ROOT$WORK/in-root.sh"
else
    printf '%s -p no:cacheprovider -rfE --durations=10 --junitxml=$OUT/junit.xml %s -k %q\n' \
        "$PYTEST_CMD" "$SUBSET_FILES" "$SUBSET_K" >> "$ROOT$WORK/in-root.sh"
fi
cat >> "$ROOT$WORK/in-root.sh" <<'EOF'
echo "pytest exit $?" > $OUT/pytest-rc
stamp end
EOF

phase_start arm "aarch64 root (qemu): README steps 1 and 2, demo text, tests"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip in the root trusts what pip on the host trusts (a network may intercept TLS with its own CA)
HOST_CA=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
CA_ENV=()
if [ -f "$HOST_CA" ]; then cp -L "$HOST_CA" "$ROOT$WORK/host-ca.crt"; CA_ENV=(PIP_CERT=$WORK/host-ca.crt); fi
# own mount namespace: /proc, /sys, /dev vanish with it, even if this script is killed
PASS_ENV=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [ -n "${!v:-}" ] && PASS_ENV+=("$v=${!v}")
done
child_cpu; CPU0=$CPU
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
unshare --mount --propagation private -- bash -c '
    set -e; r=$1; shift
    mount -t proc proc "$r/proc"
    mount -t sysfs sysfs "$r/sys"
    mount --rbind /dev "$r/dev"
    exec chroot "$r" "$@"' _ "$ROOT" \
    env -i HOME=/root LANG=C.UTF-8 TERM=dumb PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off "${CA_ENV[@]}" "${PASS_ENV[@]}" \
        /bin/bash "$WORK/in-root.sh" \
    || fail "aarch64: the run in the root stopped early"
child_cpu; ARM_CPU=$(( CPU - CPU0 ))
[ -s "$ROOT$WORK/out/failed" ] && fail "aarch64: $(tr '\n' ' ' < "$ROOT$WORK/out/failed")"
phase_end

# ------------------------------------------------------------------ compare and summarize
OUT=$ROOT$WORK/out
for k in sampled greedy; do
    if [ ! -s "$OUT/demo-$k.txt" ] || [ ! -s "$HOSTDIR/demo-$k.txt" ]; then
        DEMO[$k]="NOT RUN"; fail "demo ($k): no text from $( [ -s "$HOSTDIR/demo-$k.txt" ] && echo aarch64 || echo x86-64)"
    elif cmp -s "$OUT/demo-$k.txt" "$HOSTDIR/demo-$k.txt"; then
        DEMO[$k]=same
    else
        DEMO[$k]=DIFFERENT; fail "demo ($k): aarch64 text differs from x86-64"
        echo "  x86-64 : $(cat "$HOSTDIR/demo-$k.txt" 2>/dev/null | tr '\n' '|')"
        echo "  aarch64: $(cat "$OUT/demo-$k.txt" 2>/dev/null | tr '\n' '|')"
    fi
done
[ -f "$OUT/versions.txt" ] && read -r A_M A_PY A_NP A_NB A_K4 < "$OUT/versions.txt"
[ "${A_M:-}" = aarch64 ] || fail "aarch64: platform.machine() inside the root is '${A_M:-?}'"
[ "${A_K4:-}" = portable ] || fail "aarch64: expected the portable 4-bit kernels, got '${A_K4:-?}'"

TESTS="  (pytest did not run)"
[ -f "$OUT/junit.xml" ] && TESTS=$(python3 - "$OUT/junit.xml" $REQUIRED_FILES <<'EOF'
import collections, sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print(f"no test results ({e})"); sys.exit(1)
per = collections.OrderedDict()
tot = collections.Counter()
passed = []
for tc in root.iter("testcase"):
    f = tc.get("classname", "?").split(".")[-1] + ".py"
    kind = "failed" if tc.find("failure") is not None or tc.find("error") is not None else \
           "skipped" if tc.find("skipped") is not None else "passed"
    per.setdefault(f, collections.Counter())[kind] += 1
    tot[kind] += 1
    if kind == "passed":
        passed.append(f + "::" + tc.get("name", ""))
for f, c in per.items():
    extra = "".join(f", {c[k]} {k}" for k in ("failed", "skipped") if c[k])
    print(f"  {f:<22} {c['passed']} passed{extra}")
print(f"  {'total':<22} {tot['passed']} passed, {tot['failed']} failed, {tot['skipped']} skipped")
# what this check claims must really have run and passed (a renamed test must not silently drop out)
required = [
    ("golden logits f32, ChatGLM2/3 + GLM-4", "test_golden.py::test_prefill_and_decode_match_official[", "-f32]", 3),
    ("golden logits f32, ChatGLM-6B", "test_chatglm1.py::test_golden_prefill_and_decode[f32", "", 1),
    ("golden q4_0, ChatGLM2/3 + GLM-4", "test_quant.py::test_quantized_golden_equals_reference_forward[", "-q4_0-32]", 3),
    ("golden q4_0, ChatGLM-6B", "test_chatglm1.py::test_quantized_equals_reference_forward[q4_0", "", 1),
    ("quant kernels vs reference", "test_quant.py::test_kernels_equal_reference[", "", 12),
    ("kernels", "test_kernels.py::", "", 10),
    ("tokenizers", "test_tokenizer.py::", "", 50),
    ("golden logits f32, HF-native glm + glm4-0414", "test_golden_hf.py::test_hf_native_matches_official[", "-f32]", 3),
    ("golden q4_0, HF-native glm + glm4-0414", "test_golden_hf.py::test_hf_native_quantized_equals_reference[", "-q4_0]", 3),
    ("tokenizer.json tokenizers", "test_tokenizer_hf.py::test_golden_", "", 10),
    ("numerical extremes", "test_numerics.py::", "", 5),
    ("K-quant references", "test_kquants.py::", "", 10),
]
files = set(sys.argv[2:])   # test files of the tested commit: a requirement holds if its file exists
count = lambda pre, suf: sum(1 for n in passed if n.startswith(pre) and suf in n)
missing = [f"{label} ({count(pre, suf)} of >= {k})" for label, pre, suf, k in required
           if pre.split("::")[0] in files and count(pre, suf) < k]
for m in missing:
    print(f"  NOT COVERED: {m}")
sys.exit(1 if tot["failed"] or not tot["passed"] or missing else 0)
EOF
) || fail "aarch64: pytest failures or required tests missing (see above; log $LOG)"
[ -f "$OUT/junit.xml" ] || fail "aarch64: pytest did not run"
[ -f "$OUT/pytest-rc" ] && ! grep -q "pytest exit 0" "$OUT/pytest-rc" && fail "aarch64: $(cat "$OUT/pytest-rc")"

prev=""
while read -r name t; do
    [ -n "$prev" ] && AT[$prev]=$(( t - pt ))
    prev=$name pt=$t
done < <(cat "$OUT/times.txt" 2>/dev/null)

WALL=$(( $(date +%s) - T0 ))
cat <<EOF

================================ glmcpu arm64 check ================================
date            $(date -u '+%Y-%m-%d %H:%M UTC')
commit          $COMMIT_LINE
host            $(uname -m), $(nproc) cores, $(. /etc/os-release; echo "$PRETTY_NAME"); $QEMU_VERSION
root            $ROOT: Debian $DEBIAN_VERSION, uname -m inside: ${A_M:-?}
aarch64         python ${A_PY:-?}, numpy ${A_NP:-?}, numba ${A_NB:-?}, 4-bit kernels ${A_K4:-?}
x86-64 (host)   python ${H_PY:-?}, numpy ${H_NP:-?}, numba ${H_NB:-?}, 4-bit kernels ${H_K4:-?}
demo text       glmcpu ${DEMO_SAMPLED[*]}: ${DEMO[sampled]:-?} as x86-64
                glmcpu ${DEMO_GREEDY[*]}: ${DEMO[greedy]:-?} as x86-64
                "$(cat "$OUT/demo-sampled.txt" 2>/dev/null | tr '\n' ' ' | cut -c1-120)"
tests           $([ $FULL = 1 ] && echo "the full suite" || echo "correctness subset (-k, see script)")
$TESTS
wall time       $(mins $WALL) total: root $(mins ${DUR[root]:-0}), x86-64 reference $(mins ${DUR[host]:-0}),
                aarch64 $(mins ${DUR[arm]:-0}) (CPU time $(mins ${ARM_CPU:-0})): README step 1 $(mins ${AT[readme-step1]:-0}) (pip install .
                and the first demo run, numba compiling cold), demo runs $(mins ${AT[demo]:-0}), README step 2's
                pip install $(mins ${AT[readme-step2-install]:-0}), pytest $(mins ${AT[pytest]:-0})
                load average before / after the aarch64 part: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)
log             $LOG
EOF
if [ ${#FAILS[@]} -gt 0 ]; then
    echo "RESULT          FAIL"
    printf '                - %s\n' "${FAILS[@]}"
    exit 1
fi
echo "RESULT          PASS"
