#!/usr/bin/env bash
# `kiln run --profile` and `kiln bench --profile`: the tables list every op type of the model (as
# `kiln info` reports them) and every node; --profile-json writes a trace with one node event per
# node per timed run (the C test parses it; here it is counted).
# usage: cli_profile.sh KILN REPO_DIR
set -u
kiln=$1
repo=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=$repo/models/digits/digits_cnn.onnx
fails=0

check() { # what CONDITION...
  local what=$1
  shift
  if "$@"; then echo "ok   $what"; else echo "FAIL $what"; fails=$((fails + 1)); fi
}

ops=$("$kiln" info "$model" | sed -n '/^ops (/,/^dispatch/p' | sed '1d;$d' | awk '{print $1}')
nodes=$("$kiln" info "$model" | sed -n 's/.*nodes: \([0-9]*\)$/\1/p')
check "kiln info lists op types" test -n "$ops"

"$kiln" bench "$model" --runs 3 --warmup 1 --profile --profile-json "$tmp/p.json" \
  >"$tmp/bench.txt" 2>&1
check "bench --profile exits 0" test $? -eq 0
types=$(sed -n '/^by op type:/,/^$/p' "$tmp/bench.txt")
for op in $ops; do
  check "bench table has op type $op" grep -q "[ :]$op " <<<"$types"
done
check "bench table has every node" grep -q "by node (top $nodes of $nodes " "$tmp/bench.txt"
check "bench counts 3 runs" grep -q "profile: 3 runs recorded, $((3 * nodes)) node events" "$tmp/bench.txt"
check "trace has one node event per node per run" \
  test "$(grep -o '"cat":"Node"' "$tmp/p.json" | wc -l)" -eq $((3 * nodes))
check "trace has one session event per run" \
  test "$(grep -o '"cat":"Session"' "$tmp/p.json" | wc -l)" -eq 3

"$kiln" run "$model" --input "input=$repo/models/digits/test_x.npy" --profile --profile-top 2 \
  >"$tmp/run.txt" 2>&1
check "run --profile exits 0" test $? -eq 0
types=$(sed -n '/^by op type:/,/^$/p' "$tmp/run.txt")
for op in $ops; do
  check "run table has op type $op" grep -q "[ :]$op " <<<"$types"
done
check "run --profile-top 2 lists 2 nodes" grep -q "by node (top 2 of $nodes " "$tmp/run.txt"
check "run still prints its output" grep -q "^logits: float32 \[450,10\]" "$tmp/run.txt"

[ "$fails" -eq 0 ] || cat "$tmp/bench.txt" "$tmp/run.txt"
echo "$fails failed"
[ "$fails" -eq 0 ]
