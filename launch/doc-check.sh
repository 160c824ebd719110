#!/usr/bin/env bash
# Keeps the docs true to the code. For README.md and docs/*.md (or the files named):
# - every `trainer ...`, `mpirun ... trainer ...` and `launch/mpirun.sh N ...` line in a
#   fenced sh/bash block is parsed by the real binaries (TRAINER_PARSE_ONLY=1: clap's own
#   definitions; nothing runs), so a renamed or removed flag or command fails here;
# - every repository script or recipe such a block names (launch/, benches/, training/)
#   exists, and every relative link (and its #anchor) resolves;
# - every `--flag` named in inline code outside those blocks is a flag of some command;
# - docs/code-map.md names only paths that exist, and every source file's folder;
# - blocks fenced as ```sh run are run for real, in order, in a fresh folder per file,
#   with `trainer` on PATH (keep them to seconds: built-in examples only).
# A failure names the file and line. Exit status 0 when all hold, 1 otherwise.
#   TRAINER_BIN=path   the trainer to check with (default: ${CARGO_TARGET_DIR:-target}/release/trainer)
#   DOC_CHECK_RUN=0    parse and link checks only; skip the ```sh run blocks
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
trainer=${TRAINER_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/trainer}
[ -x "$trainer" ] || { echo "doc-check: $trainer is missing: build first (cargo build --release --workspace)" >&2; exit 1; }
trainer=$(cd "$(dirname "$trainer")" && pwd)/$(basename "$trainer")
if [ $# -eq 0 ]; then
  set -- "$root/README.md" "$root"/docs/*.md
fi
# Pages being written on other branches: a link to one is accepted until it exists.
pending=()
# Other tools' flags the prose names (cargo, the linker, mpirun, sbatch/srun, tensorboard,
# arcface_torch's train.py).
foreign_flags="--release --all --workspace --all-targets --test --test-threads --locked --network --no-as-needed --allow-run-as-root --oversubscribe --hostfile --mpi --logdir --load_fast
  --nodes --ntasks --ntasks-per-node --gpus-per-node --cpus-per-task --time --job-name --output --kill-on-bad-exit
  --signal --requeue --open-mode --partition --gres"

failures=0
ran=""
fail() { echo "$1: $2" >&2; failures=$((failures + 1)); }

# Commands of fenced sh/bash blocks, one per line: FILE:LINE<TAB>check|run<TAB>command, with
# continuation lines joined, comments and `$ ` prompts dropped. In a block that uses
# prompts, only the prompted lines are commands (the rest is output).
extract() {
  awk '
    function flush() { if (cmd != "") print FILENAME ":" start "\t" kind "\t" cmd; cmd = ""; cont = 0 }
    FNR == 1 { fence = 0 }
    /^[ \t]*```/ {
      if (!fence) {
        info = $0; sub(/^[ \t]*```/, "", info)
        n = split(info, w, /[ \t]+/)
        kind = (w[1] ~ /^(sh|bash|shell|console)$/) ? "check" : "skip"
        for (i = 2; i <= n; i++) if (w[i] == "run" && kind == "check") kind = "run"
        fence = 1; prompted = 0; cmd = ""; cont = 0; nblock = 0
        next
      }
      flush(); fence = 0; next
    }
    fence && kind != "skip" {
      line = $0; sub(/^[ \t]+/, "", line)
      if (!cont) {
        if (line ~ /^\$ /) { prompted = 1; line = substr(line, 3) }
        else if (prompted || line == "" || line ~ /^#/) next
        start = FNR
      }
      if (line ~ /\\$/) { cmd = cmd substr(line, 1, length(line) - 1) " "; cont = 1; next }
      sub(/[ \t]+#[^"'"'"']*$/, "", line)
      cmd = cmd line; flush()
    }
  ' "$@"
}

# The arguments trainer receives from a command line, or nothing when it starts no trainer.
trainer_args() {
  local -a w
  mapfile -d '' w < <(printf '%s' "$1" | xargs printf '%s\0' 2>/dev/null) || return 2
  local i=0 n=${#w[@]}
  while [ $i -lt $n ] && [[ ${w[$i]} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do i=$((i + 1)); done
  [ $i -lt $n ] || return 1
  case "${w[$i]}" in
    trainer | */trainer) i=$((i + 1)) ;;
    mpirun | mpirun.* | mpiexec | srun)
      while [ $i -lt $n ] && ! [[ ${w[$i]} == trainer || ${w[$i]} == */trainer ]]; do i=$((i + 1)); done
      [ $i -lt $n ] || return 1
      i=$((i + 1)) ;;
    launch/mpirun.sh | ./launch/mpirun.sh)
      [[ ${w[$((i + 1))]:-} =~ ^[1-9][0-9]*$ ]] || return 3
      i=$((i + 2)) ;;
    *) return 1 ;;
  esac
  local j
  for ((j = i; j < n; j++)); do
    case "${w[$j]}" in '|' | '||' | '&&' | ';' | '>'* | '2>'* | '<') break ;; esac
    printf '%s\0' "${w[$j]}"
  done
}

# Scripts and recipes of this repository that a command names must exist.
check_paths() {
  local loc=$1 word
  for word in $(printf '%s' "$2" | grep -oE '(^|[ =])(\./)?(launch|benches|training|docs)/[A-Za-z0-9_./-]+\.(sh|py|toml|md|sbatch|example)' || true); do
    word=${word#[ =]}
    word=${word#./}
    [ -e "$root/$word" ] || fail "$loc" "$word does not exist"
  done
}

check_command() {
  local loc=$1 cmd=$2 args err rc=0
  check_paths "$loc" "$cmd"
  args=$(trainer_args "$cmd" | base64 -w0) || rc=$?
  case $rc in
    1) return ;;
    2) fail "$loc" "unbalanced quotes: $cmd"; return ;;
    3) fail "$loc" "launch/mpirun.sh takes the number of ranks first: $cmd"; return ;;
  esac
  local -a a
  mapfile -d '' a < <(printf '%s' "$args" | base64 -d)
  if ! err=$(cd /tmp && TRAINER_PARSE_ONLY=1 "$trainer" "${a[@]}" 2>&1 >/dev/null </dev/null); then
    fail "$loc" "does not parse: $cmd"$'\n'"$(printf '%s\n' "$err" | sed 's/^/    /')"
  fi
}

# GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
anchors() {
  grep -E '^#{1,6} ' "$1" | sed -E 's/^#+ +//; s/[`*]//g' | tr '[:upper:]' '[:lower:]' |
    sed -E 's/[^a-z0-9 _-]//g; s/ /-/g'
}

check_links() {
  local file=$1 rel dir target frag line n=0
  dir=$(dirname "$file")
  while IFS= read -r line; do
    n=$((n + 1))
    for rel in $(printf '%s' "$line" | grep -oE '\]\([^) ]+\)' | sed -E 's/^\]\(//; s/\)$//'); do
      case "$rel" in http://* | https://* | mailto:*) continue ;; esac
      target=${rel%%#*}
      frag=""; [[ $rel == *#* ]] && frag=${rel#*#}
      [ -z "$target" ] && target=$(basename "$file")
      local path="$dir/$target" short
      short=$(realpath -m --relative-to="$root" "$path")
      if [ ! -e "$path" ]; then
        grep -qx "$short" <<<"$(printf '%s\n' "${pending[@]}")" || fail "${file#"$root"/}:$n" "broken link: $rel"
        continue
      fi
      if [ -n "$frag" ] && [[ $path == *.md ]] && ! grep -qx -- "$frag" <<<"$(anchors "$path")"; then
        fail "${file#"$root"/}:$n" "no heading for #$frag in $short"
      fi
    done
  done <"$file"
}

# Every long flag of every command, from the binaries' own --help.
all_flags() {
  local dir=$scratch/help cmd
  mkdir -p "$dir"
  "$trainer" --help >"$dir/top"
  "$trainer" bench --help >"$dir/bench"
  for cmd in $(subcommands "$dir/top"); do spawn "$dir/c-$cmd" "$trainer" "$cmd" --help; done
  for cmd in $(subcommands "$dir/bench"); do spawn "$dir/b-$cmd" "$trainer" bench "$cmd" --help; done
  wait
  cat "$dir"/* | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u
}
subcommands() { awk '/^Commands:/ { on = 1; next } /^[^ ]/ { on = 0 } on && /^  [a-z]/ && $1 != "help" { print $1 }' "$1"; }

# Runs a command in the background, its output to a file, at most DOC_CHECK_JOBS at once:
# trainer-torch loads libtorch at each start, which dominates the check's time.
spawn() {
  local out=$1
  shift
  while [ "$(jobs -rp | wc -l)" -ge "${DOC_CHECK_JOBS:-$(nproc)}" ]; do wait -n || true; done
  "$@" >"$out" 2>&1 &
}

# Flags named in prose and tables (inline code, outside fenced blocks) must exist.
check_inline_flags() {
  local file=$1 short=${1#"$root"/} line flag
  while IFS=$'\t' read -r line flag; do
    grep -qxF -- "$flag" <<<"$known_flags" || fail "$short:$line" "no command has the flag $flag"
  done < <(awk '
    /^[ \t]*```/ { fence = !fence; next }
    fence { next }
    {
      s = $0
      while (match(s, /`[^`]+`/)) {
        code = substr(s, RSTART + 1, RLENGTH - 2); s = substr(s, RSTART + RLENGTH)
        while (match(code, /(^|[ (])--[a-z][a-z0-9_-]*/)) {
          f = substr(code, RSTART, RLENGTH); sub(/^[ (]/, "", f)
          print FNR "\t" f; code = substr(code, RSTART + RLENGTH)
        }
      }
    }
  ' "$file")
}

# The code map's tree (its first fenced block): a row is a path at indent 0 or 2 (under the
# last indent-0 folder), then names relative to the row's folder. Prints LINE<TAB>PATH.
code_map_paths() {
  awk '
    function dirof(p) { sub(/[^\/]*$/, "", p); return p }
    /^```/ { if (seen++) exit; inblock = 1; next }
    !inblock { next }
    {
      match($0, /^ */); indent = RLENGTH
      n = split($0, w, /[ \t]+/)
      first = 1
      for (i = 1; i <= n; i++) {
        t = w[i]; gsub(/^[(`]+|[),;:`]+$/, "", t)
        if (t == "") continue
        if (t !~ /^[A-Za-z0-9_.][A-Za-z0-9_.\/-]*(\.(rs|sh|py|toml|md|sbatch|example)|\/)$/ && t != ".ci/run") { first = 0; continue }
        if (first && indent == 0) { path = t; top = (t ~ /\/$/) ? t : ""; dir = top }
        else if (first && indent == 2) { path = top t; dir = (t ~ /\/$/) ? path : dirof(path) }
        else path = dir t
        if (first && indent == 0 && t !~ /\/$/) dir = dirof(t)
        first = 0
        print NR "\t" path
      }
    }
  ' "$1"
}

check_code_map() {
  local file=$1 short=${1#"$root"/} line path covered
  covered=$(code_map_paths "$file")
  while IFS=$'\t' read -r line path; do
    [ -e "$root/$path" ] || fail "$short:$line" "$path does not exist"
  done <<<"$covered"
  # Every source file's folder is a row or a name in the map.
  while IFS= read -r path; do
    grep -qxF -e "$path" -e "$(dirname "$path")/" <<<"$(cut -f2 <<<"$covered")" ||
      fail "$short" "$path is in no folder the code map names"
  done < <(git -C "$root" ls-files --cached --others --exclude-standard '*.rs')
}

run_blocks() {
  local file=$1 work loc cmd log
  work=$(mktemp -d)
  log=$work/.doc-check.log
  ln -s "$root/training" "$work/training"
  (
    cd "$work"
    export PATH="$(dirname "$trainer"):$PATH"
    set -o pipefail
    while IFS=$'\t' read -r -u 3 loc _ cmd; do
      echo "\$ $cmd" >>"$log"
      if ! eval "$cmd" >>"$log" 2>&1 </dev/null; then
        echo "${loc#"$root"/}: failed: $cmd" >&2
        tail -n 20 "$log" | sed 's/^/    /' >&2
        exit 1
      fi
    done 3< <(extract "$file" | awk -F'\t' '$2 == "run"')
  ) || failures=$((failures + 1))
  rm -rf "$work"
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
known_flags=$(all_flags; printf '%s\n' $foreign_flags)
n=0
for file in "$@"; do
  file=$(realpath "$file")
  [ -f "$file" ] || { fail "$file" "no such file"; continue; }
  while IFS=$'\t' read -r loc _ cmd; do
    n=$((n + 1))
    spawn "$scratch/cmd-$(printf %06d $n)" check_command "${loc#"$root"/}" "$cmd"
  done < <(extract "$file" | awk -F'\t' '$2 != "skip"')
  check_links "$file"
  check_inline_flags "$file"
  [ "$(basename "$file")" = code-map.md ] && check_code_map "$file"
  if [ "${DOC_CHECK_RUN:-1}" != 0 ] && extract "$file" | awk -F'\t' '$2 == "run" { f = 1 } END { exit !f }'; then
    run_blocks "$file"
    ran=1
  fi
done

wait
for out in "$scratch"/cmd-*; do
  if [ -s "$out" ]; then
    cat "$out" >&2
    failures=$((failures + 1))
  fi
done

if [ $failures -gt 0 ]; then
  echo "doc-check: $failures problem(s) in the docs" >&2
  exit 1
fi
echo "doc-check: $# file(s): every command parses, every link and path resolves${ran:+, the examples ran}"
