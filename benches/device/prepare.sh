#!/bin/bash
# Prepares a GPU benchmark run on a lent device machine (docs/performance.md,
# "Measured on a GPU"): builds the step benchmark here for Burn's WGSL and
# SPIR-V (`vulkan` feature) compilers, strips and compresses both, and fetches
# the Vulkan loader and libglvnd (the NVIDIA ICD is libGLX_nvidia.so.0), all
# into the git-ignored folder .gl/ that the device call carries:
#
#   bash benches/device/prepare.sh
#   device run, carry [".gl"]:  bash benches/device/run.sh
#
# Uses CARGO_TARGET_DIR if set (the CI cache lives at /var/tmp/kradagrad-burn-target).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gl /tmp/amd64/partial
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  apt-get "${apt_opts[@]}" update >/dev/null
  (cd .gl && apt-get "${apt_opts[@]}" download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 libgles2 libopengl0)
fi
build() { # name, extra cargo args...
  local name=$1; shift
  local exe
  exe=$(cargo bench --bench step --no-run "$@" --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -n "$exe" ] || { echo "build of $name failed: run cargo bench --bench step --no-run $*" >&2; exit 1; }
  strip -o "/tmp/$name" "$exe"
  gzip -9 -c "/tmp/$name" > ".gl/$name.gz"
  echo "$name: $(du -h ".gl/$name.gz" | cut -f1) compressed"
}
build step-wgsl
build step-vk --features vulkan
du -sh .gl
