#!/usr/bin/env bash
# The guard that no test depends on the date it runs: the test suite again, with the wall
# clock of every process it starts moved a year and a month ahead (faketime; the monotonic
# clock is left alone, so timeouts stay true). A fixture with a fixed date that a
# time-relative stage reads (Loki's age limit, Alertmanager's endsAt, retention, windows)
# fails here long before the calendar reaches it.
#
# Left out, because what they talk to keeps the real clock, not because of dates:
#   alertmanager.rs  the real Alertmanager (a Go binary: faketime cannot move its clock)
#   deploy.rs        builds an image from what `ldd` lists (faketime's library among it)
set -euo pipefail
cd "$(dirname "$0")/.."
skip=" alertmanager deploy "
args=(--lib)
for f in tests/*.rs; do
  name=$(basename "$f" .rs)
  [[ "$skip" == *" $name "* ]] || args+=(--test "$name")
done
export FAKETIME_DONT_FAKE_MONOTONIC=1
faketime -f "${SHIFT:-+400d}" cargo test "${args[@]}"
