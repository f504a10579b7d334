#!/usr/bin/env bash
# The GPU check of a CUDA build of converse, on a machine with an NVIDIA GPU, without cargo:
#
#   scripts/gpu-check.sh [BINARY]      (default: target/cuda/release/converse)
#
# 1. `converse verify --device cuda` on every golden case, f32 and f64.
# 2. `converse restore` of the golden/cli inputs on the GPU and on the CPU: at least 99.5% of the
#    samples equal and none more than 1 apart (and, for information, against the official outputs).
# 3. Timings on the GPU: DnCNN 1024x1024 gray, ConverseNet and USRNet 1024x1024 RGB, SR 256 to
#    1024. Per image after one warm-up: a restore of a folder of 1 + N copies minus that of 1
#    copy, over N (the whole restore of an image: decode, upload, model, download, encode). Peak
#    GPU memory: nvidia-smi polled every 100 ms (the process's own memory, context included).
#    Where `python3 -c "import torch"` works and $CONVERSE_OFFICIAL is a clone of
#    cszn/ConverseNet, the official models run on the same GPU in the same run (forward only,
#    TF32 off as in converse, median of N after one warm-up), with the ratio.
#
# Writes $OUT/gpu-check.json and $OUT/summary.txt (printed too). Exit status 0 when every check
# passed, 1 when one failed, 2 when the check could not run.
#
# Environment: CONVERSE_SHARED (default ../shared beside the project), OUT (default
# ./gpu-check-out), CONVERSE_OFFICIAL, GPU_CHECK_REPS (N, default 5), GPU_CHECK_DEVICE (default
# cuda:0), GPU_CHECK_SKIP_TIMINGS=1.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-$here/target/cuda/release/converse}"
shared="${CONVERSE_SHARED:-$here/../shared}"
out="${OUT:-$PWD/gpu-check-out}"
reps="${GPU_CHECK_REPS:-5}"
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
mkdir -p "$out" || die "cannot create '$out'"
shared="$(cd "$shared" && pwd)"
out="$(cd "$out" && pwd)"
work="$out/work"
rm -rf "$work"
mkdir -p "$work"
have_python=0
command -v python3 >/dev/null && have_python=1
failures=0

# --- JSON, by hand (no dependency) -------------------------------------------------------------
json_str() { # a JSON string of $1
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  s=$(printf '%s' "$s" | tr -d '\000-\010\013\014\016-\037')
  printf '"%s"' "$s"
}
json_num() { # a number, or null
  if [[ "$1" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; then printf '%s' "$1"; else printf 'null'; fi
}
join_by() {
  local IFS=","
  printf '%s' "$*"
}
summary=()
say() {
  summary+=("$*")
  echo "$*"
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- The machine -------------------------------------------------------------------------------
gpu="unknown"
driver="unknown"
if command -v nvidia-smi >/dev/null; then
  gpu="$(nvidia-smi -i "$gpu_index" --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
  driver="$(nvidia-smi -i "$gpu_index" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1)"
fi
missing="$(ldd "$bin" 2>/dev/null | grep 'not found' | awk '{print $1}' | tr '\n' ' ')"
say "converse GPU check: $bin on $device ($gpu, driver $driver)"
if [[ -n "$missing" ]]; then
  say "the binary cannot load: missing $missing(the CUDA 13 runtime libraries: see docs/cuda.md)"
fi
machine_json="{\"binary\":$(json_str "$bin"),\"device\":$(json_str "$device"),\"gpu\":$(json_str "$gpu"),\"driver\":$(json_str "$driver"),\"missing_libraries\":$(json_str "$missing"),\"version\":$(json_str "$("$bin" --version 2>&1)")}"

# --- 1. verify, f32 and f64 ----------------------------------------------------------------------
verify_json=()
for precision in f32 f64; do
  t0=$(now_ms)
  text="$("$bin" verify --device "$device" --precision "$precision" --weights "$shared/weights" "$shared/golden" 2>&1)"
  code=$?
  ms=$(($(now_ms) - t0))
  last="$(printf '%s\n' "$text" | tail -n1)"
  passed="$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' <<<"$last")"
  failed="$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' <<<"$last")"
  [[ $code == 0 ]] || failures=$((failures + 1))
  say "verify $precision: exit $code, ${passed:-?} passed, ${failed:-?} failed (${ms} ms)"
  [[ $code == 0 ]] || printf '%s\n' "$text" | grep -v ' pass$' | sed 's/^/    /'
  verify_json+=("{\"precision\":\"$precision\",\"exit\":$code,\"passed\":$(json_num "$passed"),\"failed\":$(json_num "$failed"),\"ms\":$ms,\"output\":$(json_str "$text")}")
done

# --- 2. restore, GPU against CPU -----------------------------------------------------------------
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

# "N E D" (samples, equal, max difference) as words; anything else as it is.
describe() {
  local c
  read -r -a c <<<"$1"
  if [[ ${#c[@]} == 3 && "${c[0]}" =~ ^[0-9]+$ ]]; then
    awk -v n="${c[0]}" -v e="${c[1]}" -v d="${c[2]}" \
      'BEGIN { printf "%.3f%% of %d samples equal, max diff %d", 100 * e / n, n, d }'
  else
    printf '%s' "$1"
  fi
}

restore_json=()
cli="$shared/golden/cli"
# name  task  input  official output  extra arguments
cases=(
  "denoise denoise denoise_in.png denoise_out.png"
  "sr sr sr_in.png sr_out.png"
  "deblur_blind deblur deblur_in.png deblur_blind_out.png"
  "deblur_kernel deblur deblur_in.png deblur_kernel_out.png --kernel $cli/deblur_kernel.npy"
)
for entry in "${cases[@]}"; do
  read -r name task input official extra <<<"$entry"
  # shellcheck disable=SC2206 # the extra arguments are words
  extra_args=($extra)
  declare -A code=()
  for tag in gpu cpu; do
    dev="$device"
    [[ $tag == cpu ]] && dev=cpu
    "$bin" restore --task "$task" -q --device "$dev" --weights "$shared/weights" \
      "${extra_args[@]}" -i "$cli/$input" -o "$work/${name}_$tag.png" >"$work/${name}_$tag.log" 2>&1
    code[$tag]=$?
  done
  verdict="FAIL"
  cmp_gpu_cpu="not run"
  cmp_official="not run"
  equal_frac=""
  max_diff=""
  if [[ ${code[gpu]} == 0 && ${code[cpu]} == 0 ]]; then
    read -r -a c <<<"$(compare_png "$work/${name}_gpu.png" "$work/${name}_cpu.png")"
    cmp_gpu_cpu="${c[*]}"
    if [[ "${c[0]}" =~ ^[0-9]+$ ]]; then
      equal_frac="$(awk -v e="${c[1]}" -v n="${c[0]}" 'BEGIN { printf "%.6f", e / n }')"
      max_diff="${c[2]}"
      awk -v f="$equal_frac" -v m="$max_diff" 'BEGIN { exit !(f >= 0.995 && m <= 1) }' && verdict="pass"
    elif [[ "${c[1]:-}" == EQUAL ]]; then
      verdict="pass"
    fi
    cmp_official="$(compare_png "$work/${name}_gpu.png" "$cli/$official")"
  fi
  [[ $verdict == pass ]] || failures=$((failures + 1))
  say "restore $name: $verdict (exit GPU ${code[gpu]}, CPU ${code[cpu]}); GPU vs CPU: $(describe "$cmp_gpu_cpu"); GPU vs official: $(describe "$cmp_official")"
  [[ ${code[gpu]} == 0 ]] || sed 's/^/    /' "$work/${name}_gpu.log"
  restore_json+=("{\"case\":\"$name\",\"gpu_exit\":${code[gpu]},\"cpu_exit\":${code[cpu]},\"equal_fraction\":$(json_num "$equal_frac"),\"max_diff\":$(json_num "$max_diff"),\"gpu_vs_cpu\":$(json_str "$cmp_gpu_cpu"),\"gpu_vs_official\":$(json_str "$cmp_official"),\"pass\":$([[ $verdict == pass ]] && echo true || echo false),\"gpu_log\":$(json_str "$(cat "$work/${name}_gpu.log")")}")
  unset code
done

# --- 3. timings ----------------------------------------------------------------------------------
# Polls the GPU memory of process $1 (or, when nvidia-smi does not list it, the GPU's used memory
# above what it was before) every 100 ms until it ends; prints the peak in MiB and the method.
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

official_ok=0
official_reason=""
if [[ -z "${CONVERSE_OFFICIAL:-}" ]]; then
  official_reason="CONVERSE_OFFICIAL is not set"
elif [[ ! -d "$CONVERSE_OFFICIAL/models" ]]; then
  official_reason="CONVERSE_OFFICIAL='$CONVERSE_OFFICIAL' holds no models/ folder"
elif ! ((have_python)) || ! python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  official_reason="python3 with a CUDA torch is not available"
else
  official_ok=1
fi

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

# Restores folder $1 into $2 on the GPU (task $task, arguments $extra_args), whole (no tiles):
# prints "ms peak_mib method exit_status".
run_restore() {
  local t0 pid peak code
  t0=$(now_ms)
  "$bin" restore --task "$task" -q --device "$device" --tile 0 --weights "$shared/weights" \
    "${extra_args[@]}" -i "$1" -o "$2" >"$2.log" 2>&1 &
  pid=$!
  peak="$(peak_memory "$pid")"
  wait "$pid"
  code=$?
  echo "$(($(now_ms) - t0)) $peak $code"
}

timing_json=()
if [[ "${GPU_CHECK_SKIP_TIMINGS:-0}" == 1 ]]; then
  say "timings: skipped (GPU_CHECK_SKIP_TIMINGS=1)"
elif ! ((have_python)); then
  say "timings: skipped (python3 is needed to write the test images)"
else
  make_png 1024 1024 1 "$work/gray1024.png"
  make_png 1024 1024 3 "$work/rgb1024.png"
  make_png 256 256 3 "$work/rgb256.png"
  say "timings ($reps images after one warm-up; ours: whole restore per image; official: forward only)"
  # name  official case  task  input  extra
  tcases=(
    "dncnn_1024_gray dncnn1024 denoise gray1024.png"
    "conversenet_1024_rgb conversenet1024 deblur rgb1024.png"
    "usrnet_1024_rgb usrnet1024 deblur rgb1024.png --kernel $cli/deblur_kernel.npy"
    "sr_256_to_1024 sr256 sr rgb256.png"
  )
  for entry in "${tcases[@]}"; do
    read -r name ocase task input extra <<<"$entry"
    # shellcheck disable=SC2206
    extra_args=($extra)
    d="$work/t_$name"
    mkdir -p "$d/one" "$d/many" "$d/out_one" "$d/out_many"
    cp "$work/$input" "$d/one/a.png"
    for i in $(seq 0 "$reps"); do cp "$work/$input" "$d/many/img$i.png"; done
    read -r t_one _ _ code_one <<<"$(run_restore "$d/one" "$d/out_one")"
    read -r t_many peak method code_many <<<"$(run_restore "$d/many" "$d/out_many")"
    ours="" ratio="" o_ms="" o_peak="" o_smi=""
    written="$(find "$d/out_many" -name '*.png' | wc -l)"
    if [[ $code_one == 0 && $code_many == 0 && $written == $((reps + 1)) ]]; then
      ours="$(awk -v a="$t_many" -v b="$t_one" -v n="$reps" 'BEGIN { printf "%.1f", (a - b) / n }')"
    else
      failures=$((failures + 1))
    fi
    line="$name: ours ${ours:-FAILED} ms/image, peak ${peak} MiB ($method)"
    if ((official_ok)); then
      official_time "$ocase" >"$d/official.txt" 2>"$d/official.log" &
      opid=$!
      read -r o_smi _ <<<"$(peak_memory "$opid")"
      wait "$opid"
      read -r o_ms o_peak <"$d/official.txt" || true
      if [[ -n "$o_ms" && -n "$ours" ]]; then
        ratio="$(awk -v a="$ours" -v b="$o_ms" 'BEGIN { printf "%.2f", a / b }')"
      fi
      line+="; official ${o_ms:-FAILED} ms, peak ${o_smi} MiB (torch allocator ${o_peak:-?} MiB); ours/official ${ratio:-?}"
      [[ -n "$o_ms" ]] || sed 's/^/    /' "$d/official.log" | tail -n 5
    fi
    say "  $line"
    [[ $code_many == 0 ]] || sed 's/^/    /' "$d/out_many.log"
    timing_json+=("{\"case\":\"$name\",\"ms_per_image\":$(json_num "$ours"),\"first_run_ms\":$(json_num "$t_one"),\"peak_gpu_mib\":$(json_num "$peak"),\"peak_method\":\"$method\",\"official_ms_per_image\":$(json_num "$o_ms"),\"official_peak_gpu_mib\":$(json_num "$o_smi"),\"official_torch_peak_mib\":$(json_num "$o_peak"),\"ratio_ours_over_official\":$(json_num "$ratio")}")
  done
  ((official_ok)) || say "  official models: not run ($official_reason)"
fi

# --- Report ------------------------------------------------------------------------------------
ok=true
((failures == 0)) || ok=false
say "$([[ $ok == true ]] && echo "all checks passed" || echo "$failures check(s) FAILED")"
{
  printf '{"ok":%s,"failures":%d,"machine":%s,' "$ok" "$failures" "$machine_json"
  printf '"verify":[%s],' "$(join_by "${verify_json[@]}")"
  printf '"restore":[%s],' "$(join_by "${restore_json[@]}")"
  printf '"timings":[%s],' "$(join_by "${timing_json[@]+"${timing_json[@]}"}")"
  printf '"official":{"run":%s,"reason":%s}}\n' "$([[ $official_ok == 1 ]] && echo true || echo false)" "$(json_str "$official_reason")"
} >"$out/gpu-check.json"
printf '%s\n' "${summary[@]}" >"$out/summary.txt"
echo "wrote $out/gpu-check.json and $out/summary.txt"
[[ $ok == true ]]
