#!/usr/bin/env bash
# Print the directory of a working Python 3.12 (the functions' Lambda runtime, python3.12 in
# template.yaml) so that `sam build` can run without containers: the Makefile puts that directory
# first on PATH for `sam build` only. Looks on PATH, in pyenv's versions and among uv's managed
# Pythons; if there is none, tries to install one (uv, then apt-get, then pyenv). Messages go to
# stderr; stdout is only the directory. Exit 1 with what was tried when no way worked.
set -euo pipefail

VERSION=3.12
NAME="python${VERSION}"
say() { echo "ensure-python312: $*" >&2; }

# A candidate is usable when it runs, is 3.12 and has pip (sam's PythonPipBuilder runs `python3.12 -m pip`).
usable_dir() {
    local candidate="$1" exe dir
    [ -x "$candidate" ] || return 1
    exe="$("$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12); print(sys.executable)' 2>/dev/null)" || return 1
    dir="$(dirname "$exe")"
    [ -x "$dir/$NAME" ] || return 1
    if ! "$dir/$NAME" -m pip --version >/dev/null 2>&1; then
        "$dir/$NAME" -m ensurepip --upgrade >/dev/null 2>&1 || return 1
    fi
    echo "$dir"
}

find_python() {
    local candidate found
    # 1. on PATH (a pyenv shim only works when 3.12 is selected; usable_dir runs it to know)
    if candidate="$(command -v "$NAME" 2>/dev/null)" && found="$(usable_dir "$candidate")"; then
        echo "$found"; return 0
    fi
    # 2. pyenv's installed versions, newest first
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [ -d "$root/versions" ]; then
        while IFS= read -r candidate; do
            if found="$(usable_dir "$candidate")"; then echo "$found"; return 0; fi
        done < <(ls -d "$root"/versions/${VERSION}.*/bin/"$NAME" 2>/dev/null | sort -t. -k3,3nr)
    fi
    # 3. uv's managed Pythons
    if command -v uv >/dev/null 2>&1 && candidate="$(uv python find "$VERSION" 2>/dev/null)"; then
        if found="$(usable_dir "$candidate")"; then echo "$found"; return 0; fi
    fi
    # 4. the usual system places
    for candidate in /usr/bin/"$NAME" /usr/local/bin/"$NAME"; do
        if found="$(usable_dir "$candidate")"; then echo "$found"; return 0; fi
    done
    return 1
}

if dir="$(find_python)"; then
    say "using $dir/$NAME ($("$dir/$NAME" --version 2>&1))"
    echo "$dir"
    exit 0
fi

say "no Python $VERSION found; trying to install one"
tried=()
sudo=()
[ "$(id -u)" -eq 0 ] || ! command -v sudo >/dev/null 2>&1 || sudo=(sudo)

# uv downloads a standalone CPython build (needs access to its download host); uv itself comes from
# PyPI into a throwaway virtual environment when it is not installed.
uv_bin="$(command -v uv 2>/dev/null || true)"
if [ -z "$uv_bin" ]; then
    uv_tmp="$(mktemp -d)"
    trap 'rm -rf "$uv_tmp"' EXIT
    uv_env="$uv_tmp/uv"
    if python3 -m venv "$uv_env" >&2 && "$uv_env/bin/python" -m pip install --quiet uv >&2; then
        uv_bin="$uv_env/bin/uv"
    fi
fi
if [ -n "$uv_bin" ] && [ -x "$uv_bin" ]; then
    if "$uv_bin" python install "$VERSION" >&2; then
        candidate="$("$uv_bin" python find "$VERSION" 2>/dev/null || true)"
        if [ -n "$candidate" ] && dir="$(usable_dir "$candidate")"; then
            say "installed with uv: $dir/$NAME"; echo "$dir"; exit 0
        fi
    fi
    tried+=("uv python install $VERSION (failed)")
else
    tried+=("uv (could not be installed)")
fi

# Debian/Ubuntu packages (Ubuntu 24.04 ships python3.12; Debian bookworm does not).
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(apt-cache policy "$NAME" 2>/dev/null | awk '/Candidate:/ {print $2}')" != "" ] \
        && [ "$(apt-cache policy "$NAME" 2>/dev/null | awk '/Candidate:/ {print $2}')" != "(none)" ] \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            "$NAME" "${NAME}-venv" >&2; then
        if dir="$(find_python)"; then say "installed with apt-get: $dir/$NAME"; echo "$dir"; exit 0; fi
    fi
    tried+=("apt-get install $NAME (no such package here, or it failed)")
fi

# pyenv builds from source (needs python.org and a compiler).
if command -v pyenv >/dev/null 2>&1; then
    if pyenv install --skip-existing "$VERSION" >&2 && dir="$(find_python)"; then
        say "installed with pyenv: $dir/$NAME"; echo "$dir"; exit 0
    fi
    tried+=("pyenv install $VERSION (failed)")
fi

joined="$(printf '%s; ' "${tried[@]}")"
say "cannot find or install Python $VERSION for \`sam build\`; tried: ${joined%; }"
say "install Python $VERSION (with pip) any way you like (pyenv, uv, OS packages) and put $NAME on PATH"
exit 1
