#!/usr/bin/env bash
# A nightly batch job: run today's prompts, resume after a crash, and tell cron what happened.
#
#   crontab:  15 2 * * *  /path/to/nightly-batch.sh /data/prompts.jsonl /data/results
#
# Running it again on the same day resumes: answered lines are skipped, failed ones retried.
set -uo pipefail

input="${1:?usage: nightly-batch.sh PROMPTS.jsonl RESULTS_DIR [MODEL]}"
dir="${2:?usage: nightly-batch.sh PROMPTS.jsonl RESULTS_DIR [MODEL]}"
model="${3:-e4b}"
out="$dir/results-$(date +%F).jsonl"
mkdir -p "$dir"

gemma batch "$input" -o "$out" -m "$model" --temperature 0 --yes 2>>"$dir/batch.log"
status=$?

case $status in
  0)   echo "batch: all lines answered -> $out" ;;
  3)   failed=$(grep -c '"error": {' "$out" || true)
       echo "batch: $failed lines failed (their \"error\" records are in $out); rerun to retry them" >&2 ;;
  130|143) echo "batch: stopped by a signal; run the same command again to resume $out" >&2 ;;
  *)   echo "batch: could not run (exit $status); see $dir/batch.log" >&2 ;;
esac
exit $status
