#!/usr/bin/env bash
# The GPU check of a CUDA build of converse: a verdict, not a log. On a machine with an NVIDIA
# GPU (at most 10 minutes on an H100):
#
#   scripts/gpu-check.sh [--official DIR] [--unit-tests FILE] [BINARY]
#                                      (BINARY default: $CONVERSE_CUDA_TARGET_DIR or
#                                      target/cuda, release/converse)
#   scripts/gpu-check.sh --self-test   no GPU, no binary: feeds the parser recorded and
#                                      synthesised results, shows PASS, then a tampered set (a
#                                      result off its bound, a missing line) and shows FAIL
#
# It prints the driver version and the CUDA libraries found first, then runs every check, each
# of which writes result lines `RESULT|check|measured|op|bound` (op: `<=`, `>=`, or `info`: a
# number that was measured; `SKIP|check|reason` for a part that cannot run here). The verdict
# reads them back: ONE table (check | measured | bound | PASS/FAIL) and ONE exit status: 0 when
# every expected check is there and within its bound, 1 when one is off or missing, 2 when the
# check could not start.
#
# Checks:
# - golden cases, f64 on the GPU: max abs error against y64 within 1e-8, as on the CPU;
# - golden cases, f32 on the GPU against the CPU's reference path (the same candle ops, tensor
#   against tensor: `verify --against-cpu`): the difference within 1x the official f32 error
#   (the verify bar is 2x);
# - the gradient goldens (../shared/golden_grad), f64 and f32: `verify` passes them all;
# - the cargo GPU unit tests: the library's test binary built with `scripts/cuda-build --cargo
#   test --no-run --lib` (--unit-tests FILE, or found in the CUDA target dir), every test passes;
# - accuracy against the CPU at 1012x1012 (DnCNN: FFT 1024) and 1024x1024 (ConverseNet: FFT
#   1028 = 4 x 257, a large prime factor): at most 1 level apart, 99.5% of the samples equal;
# - a folder of mixed sizes on the GPU: the peak device memory (nvidia-smi, every 100 ms) within
#   the planner's largest estimate (`--dry-run` on the GPU) plus 1 GiB for the CUDA context;
# - `--x8` and tiles (`--tile 128`) on the GPU against the same on the CPU;
# - per model at 1024x1024 (SR 256 to 1024): our time per image and peak device memory, and
#   beside it the official PyTorch code's on the same GPU (--official DIR, a clone of
#   cszn/ConverseNet; skipped, saying so, without a CUDA torch).
#
# Writes the result lines and logs under $OUT (default ./gpu-check-out). Environment:
# CONVERSE_SHARED (default ../shared beside the project), GPU_CHECK_REPS (default 3),
# GPU_CHECK_DEVICE (default cuda:0).
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# --- The verdict -------------------------------------------------------------------------------
# The checks every full run records (a missing one fails).
expected=(
  "golden f64: max abs err"
  "golden f64: failed"
  "golden f32: GPU vs CPU reference / official err"
  "golden f32: failed"
  "gradient goldens f64: failed"
  "gradient goldens f32: failed"
  "unit tests: failed"
  "unit tests: passed"
  "accuracy dncnn 1012x1012: max diff"
  "accuracy dncnn 1012x1012: equal fraction"
  "accuracy conversenet 1024x1024: max diff"
  "accuracy conversenet 1024x1024: equal fraction"
  "mixed folder: failed images"
  "mixed folder: peak device MiB"
  "x8: max diff"
  "tiles: max diff"
  "timing dncnn_1024_gray: ms/image"
  "timing conversenet_1024_rgb: ms/image"
  "timing usrnet_1024_rgb: ms/image"
  "timing sr_256_to_1024: ms/image"
)

# Prints the table of the result lines in file $1; returns 0 when every expected check is present
# and within its bound.
verdict() {
  local file=$1
  local -a names=()
  local name
  for name in "${expected[@]}"; do names+=("$name"); done
  awk -F'|' '
    NR == FNR { want[++n] = $0; seen_want[$0] = 1; next }
    $1 == "RESULT" && NF >= 5 { m[$2] = $3; op[$2] = $4; b[$2] = $5; if (!($2 in order)) order[$2] = ++k; keys[k] = $2; next }
    $1 == "SKIP" { skip[$2] = $3; sk[++ns] = $2; next }
    function num(x) { return x ~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ }
    function row(c, meas, bound, v) { printf "| %-48s | %-12s | %-14s | %-4s |\n", c, meas, bound, v }
    END {
      fail = 0
      printf "| %-48s | %-12s | %-14s | %-4s |\n", "check", "measured", "bound", "    "
      printf "|%s|%s|%s|%s|\n", "--------------------------------------------------", "--------------", "----------------", "------"
      for (i = 1; i <= n; i++) {
        c = want[i]
        if (!(c in m)) { row(c, "missing", "", "FAIL"); fail++; continue }
        ok = 0
        if (op[c] == "info") ok = num(m[c])
        else if (!num(m[c]) || !num(b[c])) ok = 0
        else if (op[c] == "<=") ok = (m[c] + 0 <= b[c] + 0)
        else if (op[c] == ">=") ok = (m[c] + 0 >= b[c] + 0)
        bound = (op[c] == "info") ? "(reported)" : op[c] " " b[c]
        row(c, m[c], bound, ok ? "PASS" : "FAIL")
        if (!ok) fail++
      }
      for (j = 1; j <= k; j++) {
        c = keys[j]
        if (c in seen_want || c in done) continue
        done[c] = 1
        bound = (op[c] == "info") ? "(reported)" : op[c] " " b[c]
        row(c, m[c], bound, "info")
      }
      for (j = 1; j <= ns; j++) row(sk[j], "skipped", skip[sk[j]], "SKIP")
      print ""
      if (fail) { printf "VERDICT: FAIL (%d of %d checks off their bound or missing)\n", fail, n; exit 1 }
      printf "VERDICT: PASS (%d checks)\n", n
    }
  ' <(printf '%s\n' "${names[@]}") "$file"
}

# --- Parsers: a command's output in, result lines out ---------------------------------------------
# `converse verify` output on stdin; $1 the check's prefix, $2 the mode: `f64` (max abs err <=
# 1e-8), `against` (vs CPU reference over official f32 <= 1), `plain` (only the failed count).
parse_verify() {
  awk -v p="$1" -v mode="$2" '
    / error: / { errors++ }
    /max abs err/ {
      for (i = 1; i <= NF; i++) {
        if ($i == "err" && $(i - 1) == "abs") e = $(i + 1) + 0
        if ($i == "f32" && $(i - 1) == "official") o = $(i + 1) + 0
        if ($i == "reference" && $(i - 1) == "CPU") { r = $(i + 1) + 0; has_r = 1 }
      }
      if (e > max_e || cases == 0) max_e = e
      if (has_r && o > 0) { if (against == 0 || r / o > max_r) max_r = r / o; against++ }
      cases++; has_r = 0
    }
    /^[0-9]+ passed, [0-9]+ failed$/ { failed = $3; summary = 1 }
    END {
      if (!summary) exit
      printf "RESULT|%s: failed|%d|<=|0\n", p, failed
      if (mode == "f64" && cases > 0) printf "RESULT|%s: max abs err|%.3e|<=|1e-8\n", p, max_e
      if (mode == "against" && against > 0 && against == cases) printf "RESULT|%s: GPU vs CPU reference / official err|%.3f|<=|1\n", p, max_r
    }'
}

# The summary of a Rust test binary on stdin ("test result: ok. N passed; M failed; ...").
parse_unit_tests() {
  awk -v p="$1" '
    /^test result: / { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) passed += $(i - 1); if ($i ~ /^failed;?$/) failed += $(i - 1) } seen = 1 }
    END { if (seen) { printf "RESULT|%s: failed|%d|<=|0\n", p, failed; printf "RESULT|%s: passed|%d|>=|1\n", p, passed } }'
}

# compare_png's "samples equal max_diff" on stdin: max diff <= 1 and equal fraction >= 0.995;
# `max` only: the max diff alone.
parse_compare() {
  awk -v p="$1" -v what="${2:-both}" '
    NF == 3 && $1 ~ /^[0-9]+$/ && $1 > 0 {
      printf "RESULT|%s: max diff|%d|<=|1\n", p, $3
      if (what == "both") printf "RESULT|%s: equal fraction|%.6f|>=|0.995\n", p, $2 / $1
    }'
}

# --- Self-test: the parser and the verdict on recorded/synthesised output, no GPU --------------
self_test() {
  local dir
  dir="$(mktemp -d)" || exit 2
  # shellcheck disable=SC2064 # expand now
  trap "rm -rf '$dir'" EXIT
  synth() { # $1: tampered (1) or not (0)
    local t=$1
    {
      printf '%s\n' \
        "converse2d_0.safetensors     converse2d         max abs err 2.111e-15  official f32 1.212e-4  bound 2.424e-4  pass" \
        "dncnn_1.safetensors          converse_dncnn     max abs err $([[ $t == 1 ]] && echo 3.2e-8 || echo 4.4e-12)  official f32 2.185e-5  bound 4.370e-5  pass" \
        "2 passed, 0 failed" | parse_verify "golden f64" f64
      printf '%s\n' \
        "converse2d_3.safetensors     converse2d         max abs err 6.111e-7  official f32 1.212e-4  bound 2.424e-4  pass  vs CPU reference 8.345e-7" \
        "dncnn_1.safetensors          converse_dncnn     max abs err 2.270e-7  official f32 2.185e-5  bound 4.370e-5  pass  vs CPU reference 1.192e-7" \
        "2 passed, 0 failed" | parse_verify "golden f32" against
      printf '%s\n' "grad_converse2d_0.safetensors converse2d dweight64 max abs err 6.139e-10  official f32 3.280e-1  bound 1.0e-8  pass" \
        "9 passed, 0 failed" | parse_verify "gradient goldens f64" plain
      printf '%s\n' "9 passed, 0 failed" | parse_verify "gradient goldens f32" plain
      if [[ $t == 0 ]]; then # tampered: the unit tests' output is missing
        printf '%s\n' "running 12 tests" "test ops::fft::cuda::tests::cuda_matches_the_cpu ... ok" \
          "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 85 filtered out; finished in 3.10s" |
          parse_unit_tests "unit tests"
      fi
      echo "3145728 3145701 1" | parse_compare "accuracy dncnn 1012x1012"
      echo "3145728 3140001 1" | parse_compare "accuracy conversenet 1024x1024"
      echo "RESULT|mixed folder: failed images|0|<=|0"
      echo "RESULT|mixed folder: peak device MiB|9100|<=|17042"
      echo "60000 59990 1" | parse_compare "x8" max
      echo "60000 59990 1" | parse_compare "tiles" max
      for c in dncnn_1024_gray conversenet_1024_rgb usrnet_1024_rgb sr_256_to_1024; do
        echo "RESULT|timing $c: ms/image|41.5|info|"
        echo "RESULT|timing $c: peak device MiB|2310|info|"
      done
      echo "SKIP|official timings|python3 with a CUDA torch is not available"
    } >"$dir/results-$t"
  }
  synth 0
  synth 1
  echo "== self-test: recorded and synthesised results, as a GPU run writes them =="
  verdict "$dir/results-0"
  local good=$?
  echo
  echo "== self-test: tampered (golden f64 at 3.2e-8, over its 1e-8; the unit tests' lines missing) =="
  verdict "$dir/results-1"
  local bad=$?
  echo
  if [[ $good == 0 && $bad != 0 ]]; then
    echo "self-test passed: the verdict is PASS (exit $good) for good results, FAIL (exit $bad) for tampered ones"
    return 0
  fi
  echo "self-test FAILED: exit $good for good results, $bad for tampered ones"
  return 1
}

official=""
unit_tests=""
bin=""
while (($#)); do
  case "$1" in
  --self-test)
    self_test
    exit $?
    ;;
  --official) official="${2:?--official needs a folder}"; shift 2 ;;
  --unit-tests) unit_tests="${2:?--unit-tests needs a file}"; shift 2 ;;
  -h | --help) sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) bin="$1"; shift ;;
  esac
done
cuda_target="${CONVERSE_CUDA_TARGET_DIR:-$here/target/cuda}"
bin="${bin:-$cuda_target/release/converse}"
shared="${CONVERSE_SHARED:-$here/../shared}"
out="${OUT:-$PWD/gpu-check-out}"
reps="${GPU_CHECK_REPS:-3}"
device="${GPU_CHECK_DEVICE:-cuda:0}"
gpu_index="${device#cuda}"
gpu_index="${gpu_index#:}"
gpu_index="${gpu_index:-0}"

die() {
  echo "gpu-check: $*" >&2
  exit 2
}
[[ -x "$bin" ]] || die "no converse binary at '$bin' (build it with scripts/cuda-build)"
[[ -d "$shared/golden" && -d "$shared/weights" ]] || die "no shared data at '$shared' (set CONVERSE_SHARED)"
command -v python3 >/dev/null || die "python3 is needed (to write and compare the test images)"
mkdir -p "$out" || die "cannot create '$out'"
shared="$(cd "$shared" && pwd)"
out="$(cd "$out" && pwd)"
work="$out/work"
rm -rf "$work"
mkdir -p "$work"
results="$out/results.txt"
: >"$results"
weights=(--weights "$shared/weights")
cli="$shared/golden/cli"

# --- The driver and the libraries, first ----------------------------------------------------------
echo "converse GPU check: $bin on $device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi -i "$gpu_index" --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 | sed 's/^/  /'
else
  echo "  nvidia-smi: not found"
fi
echo "  $("$bin" --version 2>&1 | head -n1)"
echo "  CUDA libraries the loader finds:"
{ ldconfig -p 2>/dev/null | awk '/lib(cuda|cudart|cublas|cublasLt|cufft|curand|nvrtc)\.so/ { print $NF }'
  IFS=: read -r -a dirs <<<"${LD_LIBRARY_PATH:-}"
  for d in "${dirs[@]}"; do
    [[ -d "$d" ]] && find "$d" -maxdepth 1 -name 'lib*.so*' 2>/dev/null | grep -E '/lib(cuda|cudart|cublas|cublasLt|cufft|curand|nvrtc)\.so'
  done
  ldd "$bin" 2>/dev/null | awk '/lib(cuda|cudart|cublas|cublasLt|cufft|curand|nvrtc)/ { print $3 == "" ? $1 " (not found)" : $3 }'
} | sort -u | sed 's/^/    /'
echo
compare_png() { # compare A B: prints "samples equal max_diff" (or "bytes EQUAL|DIFFERENT")
  if ((have_python)); then
    python3 - "$1" "$2" <<'PY'
import struct, sys, zlib

def png(path):
    d = open(path, "rb").read()
    if d[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, ihdr = 8, [], None
    while pos < len(d):
        n, kind = struct.unpack(">I4s", d[pos:pos + 8])
        body = d[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    w, h, depth, ctype, _, _, interlace = ihdr
    if interlace or ctype == 3 or depth not in (8, 16):
        raise SystemExit(f"{path}: interlaced, palette or {depth}-bit PNG not handled")
    ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    bpp = ch * depth // 8
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    rows, prev, i = [], bytearray(stride), 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    data = b"".join(rows)
    if depth == 16:
        return (w, h, ch), struct.unpack(f">{len(data) // 2}H", data)
    return (w, h, ch), data

(sa, a), (sb, b) = png(sys.argv[1]), png(sys.argv[2])
if sa != sb:
    print(f"shape {sa} {sb}")
else:
    equal = sum(1 for x, y in zip(a, b) if x == y)
    print(len(a), equal, max((abs(x - y) for x, y in zip(a, b)), default=0))
PY
  elif cmp -s "$1" "$2"; then
    echo "bytes EQUAL"
  else
    echo "bytes DIFFERENT"
  fi
}

peak_memory() {
  local pid=$1 base peak=0 method="process" v
  if ! command -v nvidia-smi >/dev/null; then
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    echo "null no_nvidia-smi"
    return
  fi
  base="$(nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1)"
  local used_peak=0
  while kill -0 "$pid" 2>/dev/null; do
    v="$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
      awk -F', *' -v p="$pid" '$1 == p { print $2 }' | head -n1)"
    [[ "$v" =~ ^[0-9]+$ ]] && ((v > peak)) && peak=$v
    v="$(nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1)"
    [[ "$v" =~ ^[0-9]+$ ]] && ((v > used_peak)) && used_peak=$v
    sleep 0.1
  done
  if ((peak == 0)) && [[ "$base" =~ ^[0-9]+$ ]]; then
    peak=$((used_peak - base))
    method="gpu_used_minus_baseline"
  fi
  echo "$peak $method"
}

# Writes a PNG of $1 x $2 pixels with $3 channels (1 or 3) to $4: smooth shapes plus noise.
make_png() {
  python3 - "$@" <<'PY'
import random, struct, sys, zlib, math
w, h, ch, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rnd = random.Random(1)
rows = []
for y in range(h):
    row = bytearray([0])
    for x in range(w):
        for c in range(ch):
            v = 128 + 60 * math.sin(x / (23.0 + 7 * c)) * math.cos(y / 31.0) + rnd.randint(-25, 25)
            row.append(max(0, min(255, int(v))))
    rows.append(bytes(row))
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
ihdr = struct.pack(">IIBBBBB", w, h, 8, 0 if ch == 1 else 2, 0, 0, 0)
open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + chunk(b"IEND", b""))
PY
}


# Runs `converse restore` with the arguments given, logging to $work/$log.log; returns its status.
restore() {
  local log=$1
  shift
  "$bin" restore -q --overwrite "${weights[@]}" "$@" >"$work/$log.log" 2>&1
}

# Restores on the GPU and on the CPU with the same arguments (output $work/NAME_{gpu,cpu}.png) and
# compares: result lines for check $1 (parse_compare mode $2), args after `--`.
gpu_vs_cpu() {
  local name=$1 mode=$2
  shift 3
  if restore "${name}_gpu" --device "$device" "$@" -o "$work/${name}_gpu.png" &&
    restore "${name}_cpu" --device cpu "$@" -o "$work/${name}_cpu.png"; then
    compare_png "$work/${name}_gpu.png" "$work/${name}_cpu.png" | parse_compare "$name" "$mode" >>"$results"
  else
    echo "  $name: a restore failed:"
    tail -n 3 "$work/${name}_gpu.log" "$work/${name}_cpu.log" 2>/dev/null | sed 's/^/    /'
  fi
}

step() { echo "[$(date +%H:%M:%S)] $*"; }

# --- Golden cases -----------------------------------------------------------------------------------
step "golden cases, f64"
"$bin" verify --device "$device" --precision f64 "${weights[@]}" "$shared/golden" >"$work/golden_f64.log" 2>&1
parse_verify "golden f64" f64 <"$work/golden_f64.log" >>"$results"
step "golden cases, f32 against the CPU's reference path"
"$bin" verify --device "$device" --precision f32 --against-cpu "${weights[@]}" "$shared/golden" >"$work/golden_f32.log" 2>&1
parse_verify "golden f32" against <"$work/golden_f32.log" >>"$results"
for p in f64 f32; do
  step "gradient goldens, $p"
  if [[ -d "$shared/golden_grad" ]]; then
    "$bin" verify --device "$device" --precision "$p" "${weights[@]}" "$shared/golden_grad" >"$work/grad_$p.log" 2>&1
    parse_verify "gradient goldens $p" plain <"$work/grad_$p.log" >>"$results"
  fi
done

# --- The cargo GPU unit tests --------------------------------------------------------------------
step "cargo GPU unit tests"
# The library's and the binary's unit-test executables (converse-HASH), the newest two.
if [[ -z "$unit_tests" ]]; then
  # shellcheck disable=SC2012 # plain file names
  unit_tests="$(ls -t "$cuda_target"/release/deps/converse-* 2>/dev/null | grep -v '\.d$' | head -n2 | tr '\n' ' ')"
fi
if [[ -n "$unit_tests" ]]; then
  for t in $unit_tests; do
    [[ -x "$t" ]] || continue
    echo "  $t"
    (cd "$here" && CONVERSE_SHARED="$shared" timeout 300 "$t" --test-threads 1 cuda) 2>&1
  done >"$work/unit_tests.log"
  parse_unit_tests "unit tests" <"$work/unit_tests.log" >>"$results"
else
  echo "  no unit-test binary: build it with scripts/cuda-build --cargo test --no-run --lib (or give --unit-tests FILE)"
fi

# --- Accuracy at 1024 against the CPU ----------------------------------------------------------------
make_png 1012 1012 1 "$work/gray1012.png"
make_png 1024 1024 1 "$work/gray1024.png"
make_png 1024 1024 3 "$work/rgb1024.png"
make_png 256 256 3 "$work/rgb256.png"
step "accuracy at 1012x1012 (DnCNN, FFT 1024) and 1024x1024 (ConverseNet, FFT 1028 = 4 x 257)"
gpu_vs_cpu "accuracy dncnn 1012x1012" both -- --task denoise --tile 0 -i "$work/gray1012.png"
gpu_vs_cpu "accuracy conversenet 1024x1024" both -- --task deblur --tile 0 -i "$work/rgb1024.png"

# --- x8 and tiles ----------------------------------------------------------------------------------
step "--x8 and tiles on the GPU"
make_png 300 200 3 "$work/rgb300.png"
make_png 400 300 1 "$work/gray400.png"
gpu_vs_cpu "x8" max -- --task denoise --x8 -i "$work/rgb300.png"
gpu_vs_cpu "tiles" max -- --task denoise --tile 128 -i "$work/gray400.png"

# --- A folder of mixed sizes: peak device memory against the plan ------------------------------------
step "a folder of mixed sizes"
mixed="$work/mixed"
mkdir -p "$mixed"
for s in "256 256" "640 480" "1000 700" "1024 1024" "333 517" "1536 1024"; do
  read -r w h <<<"$s"
  make_png "$w" "$h" 1 "$mixed/m_${w}x$h.png"
done
"$bin" restore --task denoise --dry-run --device "$device" "${weights[@]}" -i "$mixed" -o "$work/mixed_out" >"$work/mixed_plan.log" 2>&1
plan_mib="$(awk '/estimated peak/ { for (i = 1; i <= NF; i++) if ($i == "peak") { v = $(i + 1); u = $(i + 2); sub(/[^A-Za-z]+$/, "", u); m = (u == "GiB") ? v * 1024 : v; if (m > max) max = m } } END { if (max) printf "%d", max }' "$work/mixed_plan.log")"
"$bin" restore -q --task denoise --device "$device" "${weights[@]}" -i "$mixed" -o "$work/mixed_out" >"$work/mixed.log" 2>&1 &
pid=$!
read -r peak method <<<"$(peak_memory "$pid")"
wait "$pid"
code=$?
written="$(find "$work/mixed_out" -name '*.png' 2>/dev/null | wc -l)"
echo "RESULT|mixed folder: failed images|$((6 - written))|<=|0" >>"$results"
if [[ -n "$plan_mib" && "$peak" =~ ^[0-9]+$ ]]; then
  echo "RESULT|mixed folder: peak device MiB|$peak|<=|$((plan_mib + 1024))" >>"$results"
fi
echo "  exit $code; peak $peak MiB ($method); the plan's largest estimate ${plan_mib:-?} MiB (+1024 MiB for the context)"

# --- Timings beside the official code ----------------------------------------------------------------
official_ok=0
if [[ -z "$official" ]]; then
  echo "SKIP|official timings|no --official DIR (a clone of cszn/ConverseNet)" >>"$results"
elif [[ ! -d "$official/models" ]]; then
  echo "SKIP|official timings|'$official' holds no models/ folder" >>"$results"
elif ! python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "SKIP|official timings|python3 with a CUDA torch is not available" >>"$results"
else
  official_ok=1
fi
CONVERSE_OFFICIAL="$official"
# Times the official model $1 on the GPU: prints "ms_per_image torch_peak_mib".
official_time() {
  python3 - "$CONVERSE_OFFICIAL" "$shared/weights" "$1" "$reps" "$gpu_index" <<'PY'
import sys, time, statistics
import torch
repo, weights, case, reps, gpu = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path.insert(0, repo)
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device(f"cuda:{gpu}")
torch.manual_seed(0)
def load(m, name):
    m.load_state_dict(torch.load(f"{weights}/{name}.pth", map_location="cpu"), strict=True)
    return m.eval().to(dev)
if case == "dncnn1024":
    from models.converse_dncnn import ConverseDnCNN
    m = load(ConverseDnCNN(in_channels=1, kernel_size=7, num_features=64, padding=6, padding_mode="circular"), "converse_dncnn")
    x = torch.rand(1, 1, 1024, 1024, device=dev); run = lambda: m(x)
elif case == "sr256":
    from models.converse_srresnet import ConverseMSRResNet
    m = load(ConverseMSRResNet(3, 3, 64, 16, upscale=4), "converse_srresnet")
    x = torch.rand(1, 3, 256, 256, device=dev); run = lambda: m(x)
elif case == "conversenet1024":
    from models.converse_usrnet import ConverseNet
    m = load(ConverseNet(5, 64, 7), "conversenet")
    x = torch.rand(1, 3, 1024, 1024, device=dev); run = lambda: m(x)
elif case == "usrnet1024":
    from models.converse_usrnet import ConverseUSRNet
    m = load(ConverseUSRNet(5, 64, 7), "converse_usrnet")
    x = torch.rand(1, 3, 1024, 1024, device=dev)
    k = torch.rand(1, 1, 7, 7, device=dev); k = k / k.sum()
    run = lambda: m(x, k, 1)
times = []
with torch.no_grad():
    for i in range(1 + reps):
        torch.cuda.synchronize(dev); t = time.perf_counter(); run(); torch.cuda.synchronize(dev)
        if i > 0:
            times.append((time.perf_counter() - t) * 1e3)
print(f"{statistics.median(times):.2f} {torch.cuda.max_memory_allocated(dev) / 2**20:.0f}")
PY
}

step "timings ($reps images after one warm-up, whole restore per image; official: forward only)"
# name  official case  task  input  extra
tcases=(
  "dncnn_1024_gray dncnn1024 denoise gray1024.png"
  "conversenet_1024_rgb conversenet1024 deblur rgb1024.png"
  "usrnet_1024_rgb usrnet1024 deblur rgb1024.png --kernel $cli/deblur_kernel.npy"
  "sr_256_to_1024 sr256 sr rgb256.png"
)
for entry in "${tcases[@]}"; do
  read -r name ocase task input extra <<<"$entry"
  # shellcheck disable=SC2206 # the extra arguments are words
  extra_args=($extra)
  d="$work/t_$name"
  mkdir -p "$d/one" "$d/many"
  cp "$work/$input" "$d/one/a.png"
  for i in $(seq 0 "$reps"); do cp "$work/$input" "$d/many/img$i.png"; done
  t0=$(date +%s%N)
  "$bin" restore -q --task "$task" --device "$device" --tile 0 "${weights[@]}" "${extra_args[@]}" -i "$d/one" -o "$d/out_one" >"$d/one.log" 2>&1
  code_one=$?
  t1=$(date +%s%N)
  "$bin" restore -q --task "$task" --device "$device" --tile 0 "${weights[@]}" "${extra_args[@]}" -i "$d/many" -o "$d/out_many" >"$d/many.log" 2>&1 &
  pid=$!
  read -r peak _ <<<"$(peak_memory "$pid")"
  wait "$pid"
  code_many=$?
  t2=$(date +%s%N)
  if [[ $code_one == 0 && $code_many == 0 ]]; then
    ms="$(awk -v a=$((t2 - t1)) -v b=$((t1 - t0)) -v n="$reps" 'BEGIN { printf "%.1f", (a - b) / n / 1e6 }')"
    echo "RESULT|timing $name: ms/image|$ms|info|" >>"$results"
    echo "RESULT|timing $name: peak device MiB|$peak|info|" >>"$results"
  else
    tail -n 3 "$d/many.log" | sed 's/^/    /'
  fi
  if ((official_ok)); then
    official_time "$ocase" >"$d/official.txt" 2>"$d/official.log" &
    opid=$!
    read -r o_smi _ <<<"$(peak_memory "$opid")"
    wait "$opid"
    read -r o_ms o_peak <"$d/official.txt" || true
    echo "RESULT|official $name: ms/image|${o_ms:-failed}|info|" >>"$results"
    echo "RESULT|official $name: peak device MiB|${o_smi:-?} (torch ${o_peak:-?})|info|" >>"$results"
  fi
done

echo
echo "result lines: $results; logs: $work"
echo
verdict "$results"
