#!/usr/bin/env bash
# Gets what the C example needs on a fresh Debian machine, into examples/c/build/:
#   - the ONNX Runtime shared library, from the onnxruntime Python wheel installed in the active
#     Python (linked through a libonnxruntime.so.1 symlink: the wheel has no file by its SONAME);
#   - the C headers, from Debian 13's libonnxruntime-dev package, downloaded (not installed) from the
#     Debian archive this machine's own apt configuration names, and unpacked with dpkg-deb -x.
# The C API is backward compatible: the API-21 headers work with the 1.2x/1.3x library.
# Exit 3: the headers could not be fetched (no network, no Debian archive): the test suite skips the
# C example then, saying so; any other failure is an error.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$here/build"
mkdir -p "$build/lib" "$build/include"
PYTHON="${PYTHON:-python3}"

capi="$("$PYTHON" -c 'import onnxruntime, pathlib; print(pathlib.Path(onnxruntime.__file__).parent / "capi")')"
lib="$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)"
[ -n "$lib" ] || { echo "setup.sh: no libonnxruntime.so.1.* in $capi; pip install onnxruntime" >&2; exit 1; }
ln -sf "$lib" "$build/lib/libonnxruntime.so.1"
ln -sf "$build/lib/libonnxruntime.so.1" "$build/lib/libonnxruntime.so"

if [ ! -f "$build/include/onnxruntime_c_api.h" ]; then
  # The Debian archive this machine uses (deb822 .sources or one-line sources.list), security excluded.
  uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  if [ -z "$uri" ]; then
    uri="$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
  fi
  [ -n "$uri" ] || { echo "setup.sh: no Debian archive found in this machine's apt configuration, so the C API headers (libonnxruntime-dev) cannot be fetched" >&2; exit 3; }
  offline() { echo "setup.sh: cannot download libonnxruntime-dev (the C API headers) from $uri: no network, or the archive lacks it" >&2; rm -rf "$apt_dir"; exit 3; }
  apt_dir="$build/apt"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  echo "deb $uri trixie main" > "$apt_dir/sources.list"
  opts=(-q -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update >/dev/null 2>&1 || { sleep 5; apt-get "${opts[@]}" update >/dev/null 2>&1; } || offline
  (cd "$apt_dir" && apt-get "${opts[@]}" download libonnxruntime-dev >/dev/null 2>&1) || offline
  deb="$(ls "$apt_dir"/libonnxruntime-dev_*.deb | head -n 1)"
  dpkg-deb -x "$deb" "$apt_dir/root"
  cp "$apt_dir"/root/usr/include/onnxruntime/*.h "$build/include/"
  rm -rf "$apt_dir"
fi
echo "setup.sh: library $(readlink -f "$build/lib/libonnxruntime.so.1"), headers in $build/include"
