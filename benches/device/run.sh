#!/bin/bash
# Runs the step benchmark on a lent GPU machine from what
# benches/device/prepare.sh put in .gl/ (carried with the call). Each group
# runs under its own time limit inside BUDGET seconds; reports and logs go to
# $OUT/<name>/ (step.md, log), and the tables are printed at the end of each.
#   BUDGET=500 bash benches/device/run.sh [name:binary:groups:steps:limit ...]
START=$(date +%s); BUDGET=${BUDGET:-500}
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f $icd ] && export VK_DRIVER_FILES=$icd
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for b in .gl/*.gz; do gunzip -c "$b" > "/tmp/$(basename "$b" .gz)"; chmod +x "/tmp/$(basename "$b" .gz)"; done
export KRADAGRAD_BENCH_BACKENDS=wgpu
run() { # name binary groups steps limit
  local left=$((BUDGET - ($(date +%s) - START)))
  local t=$(( $5 < left ? $5 : left ))
  if [ "$t" -lt 15 ]; then echo "=== $1 skipped: out of time"; return; fi
  mkdir -p "$OUT/$1"
  echo "=== $1 (limit $t s)"
  local began=$(date +%s)
  KRADAGRAD_BENCH_OUT="$OUT/$1" KRADAGRAD_BENCH_GROUPS=$3 KRADAGRAD_BENCH_STEPS=$4 \
    timeout "$t" "/tmp/$2" --bench > "$OUT/$1/log" 2>&1
  echo "rc $? after $(($(date +%s) - began)) s"
  grep "^|\|^#\|^Forward\|^One\|skipped" "$OUT/$1/log" | grep -v "^|---\|XDG" | tail -40
  if grep -q "no adapter" "$OUT/$1/log"; then echo "no wgpu adapter: stopping"; exit 1; fi
}
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(
  a_wgsl:step-wgsl:autoencoder:300:280
  e_wgsl:step-wgsl:kernels:1:90
  b_wgsl:step-wgsl:quadratic:30:60
  c_wgsl:step-wgsl:scaling:20:120
  a_vk:step-vk:autoencoder:300:200
  f_wgsl:step-wgsl:sizes:20:300
)
for r in "${runs[@]}"; do IFS=: read -r name bin groups steps limit <<< "$r"; run "$name" "$bin" "$groups" "$steps" "$limit"; done
