#!/usr/bin/env bash
# Compile the compiled fast path (layers/refinery/refinery/_record_fastpath.pyx) for the Lambda
# runtime — CPython 3.12 on x86_64 Linux (template.yaml) — into DEST, a copy of the refinery package.
# Called by layers/refinery/Makefile during `sam build` (and so by `make build`).
#
# Needs: Cython (CYTHON; else `cython` on PATH; else the one `make setup` installs in the repository's
# .venv), a C compiler (CC, default gcc), Python 3.12 with its headers (PY312, default python3.12) and
# objdump. The result must not need a newer glibc than the runtime's (Amazon Linux 2023: 2.34), which
# is checked.
#
# Without one of those the build FAILS, saying what to install: a plain `sam build` must not quietly
# ship the pure-Python path (the same output at about twice the CPU per record), since SAM shows a
# makefile build's stderr only when it fails. To build without the fast path on purpose, set
# REFINERY_ALLOW_PURE_PYTHON=1 (then a notice goes to stdout, which SAM prints).
# REFINERY_REQUIRE_FASTPATH=1 (make build, CI) makes it an error whatever else is set.
set -euo pipefail

dest="${1:?usage: build-fastpath.sh DEST_PACKAGE_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_pyx="$here/../layers/refinery/refinery/_record_fastpath.pyx"
cc="${CC:-gcc}"
py="${PY312:-python3.12}"
runtime_suffix=".cpython-312-x86_64-linux-gnu.so"
max_glibc="2.34"
if [ -n "${CYTHON:-}" ]; then
    cython="$CYTHON"
elif command -v cython >/dev/null 2>&1; then
    cython="cython"
elif [ -x "$here/../.venv/bin/cython" ]; then
    cython="$here/../.venv/bin/cython"  # installed by `make setup`
else
    cython="cython"
fi

give_up() {
    if [ "${REFINERY_ALLOW_PURE_PYTHON:-0}" = "1" ] && [ "${REFINERY_REQUIRE_FASTPATH:-0}" != "1" ]; then
        echo "build-fastpath: NOTICE: $*; REFINERY_ALLOW_PURE_PYTHON=1: the layer ships the pure-Python" \
            "path (the same output, about twice the CPU per record)"
        exit 0
    fi
    {
        echo "build-fastpath: ERROR: $*."
        echo "build-fastpath: the refinery layer needs its compiled fast path (the pure-Python path costs"
        echo "  about twice the CPU per record). Install what is missing: Cython (\`make setup\`, which puts it"
        echo "  in .venv, or \`python3 -m pip install Cython\`), gcc and objdump (\`apt-get install gcc"
        echo "  binutils\`), Python 3.12 with its headers (\`apt-get install python3.12-dev\`, or pyenv/uv;"
        echo "  \`make build\` finds or installs one). To deploy without it on purpose:"
        echo "  REFINERY_ALLOW_PURE_PYTHON=1 sam build"
    } >&2
    exit 1
}

command -v "$cython" >/dev/null 2>&1 \
    || give_up "Cython not found (CYTHON=$cython, not on PATH, and no .venv/bin/cython)"
command -v "$cc" >/dev/null 2>&1 || give_up "no C compiler (CC=$cc)"
command -v objdump >/dev/null 2>&1 || give_up "objdump not found"
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
echo "build-fastpath: built $(basename "$target") (glibc ${newest:-none} <= $max_glibc)"
