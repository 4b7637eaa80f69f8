#!/usr/bin/env bash
# Compile the compiled fast path (layers/refinery/refinery/_record_fastpath.pyx) for the Lambda
# runtime — CPython 3.12 on x86_64 Linux (template.yaml) — into DEST, a copy of the refinery package.
# Called by layers/refinery/Makefile during `sam build`.
#
# Needs: Cython (CYTHON, default `cython`), a C compiler (CC, default gcc), Python 3.12 with its
# headers (PY312, default python3.12) and objdump. The result must not need a newer glibc than the
# runtime's (Amazon Linux 2023: 2.34), which is checked.
#
# Without one of those, the layer ships pure Python (the same output, about twice the CPU per
# record) and a WARNING says why — unless REFINERY_REQUIRE_FASTPATH=1 (make build, CI), which makes
# it an error.
set -euo pipefail

dest="${1:?usage: build-fastpath.sh DEST_PACKAGE_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_pyx="$here/../layers/refinery/refinery/_record_fastpath.pyx"
cython="${CYTHON:-cython}"
cc="${CC:-gcc}"
py="${PY312:-python3.12}"
runtime_suffix=".cpython-312-x86_64-linux-gnu.so"
max_glibc="2.34"

give_up() {
    if [ "${REFINERY_REQUIRE_FASTPATH:-0}" = "1" ]; then
        echo "build-fastpath: ERROR: $*" >&2
        exit 1
    fi
    echo "build-fastpath: WARNING: $*; the layer ships the pure-Python path (same output, slower)" >&2
    exit 0
}

command -v "$cython" >/dev/null 2>&1 || give_up "Cython not found (CYTHON=$cython; pip install Cython)"
command -v "$cc" >/dev/null 2>&1 || give_up "no C compiler (CC=$cc; apt-get install gcc)"
command -v objdump >/dev/null 2>&1 || give_up "objdump not found (apt-get install binutils)"
suffix="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))' 2>/dev/null)" \
    || give_up "Python 3.12 not found (PY312=$py)"
[ "$suffix" = "$runtime_suffix" ] \
    || give_up "$py builds $suffix extensions, not the runtime's $runtime_suffix"
include="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[ -f "$include/Python.h" ] || give_up "no Python.h in $include (Python 3.12's headers)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$cython" -3 -o "$work/_record_fastpath.c" "$source_pyx" || give_up "cython failed on $source_pyx"
target="$dest/_record_fastpath$suffix"
"$cc" -O2 -fPIC -shared -fno-strict-aliasing -fwrapv -I"$include" \
    "$work/_record_fastpath.c" -o "$target" 2>"$work/cc.log" \
    || { cat "$work/cc.log" >&2; give_up "$cc could not compile the fast path"; }

newest="$(objdump -T "$target" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)"
if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$newest" "$max_glibc" | sort -V | tail -n 1)" != "$max_glibc" ]; then
    rm -f "$target"
    give_up "the fast path needs glibc $newest, newer than the Lambda runtime's $max_glibc"
fi
echo "build-fastpath: built $(basename "$target") (glibc ${newest:-none} <= $max_glibc)" >&2
