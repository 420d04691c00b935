#!/usr/bin/env bash
# Run a timing command with this machine's long training jobs paused (SIGSTOP) and resumed
# (SIGCONT) afterwards, whatever happens. On a 2-core machine a timing taken while a training
# job holds both cores measures the training job, not the model.
# Jobs paused: command lines matching $QUIET_PATTERN (default: teacher/student training runs).
# Usage: bash benchmarks/quiet_cpu.sh CMD [ARGS...]
set -u
pattern="${QUIET_PATTERN:-finetune_teachers.py|bin/bertedge (finetune|distill|prune|adapt|tune|run)|benchmarks/.*train}"
pids=()
for pid in $(pgrep -f -A "$pattern" || true); do
  [ "$pid" = "$$" ] || [ "$pid" = "$PPID" ] || pids+=("$pid")
done
resume() { if [ ${#pids[@]} -gt 0 ]; then kill -CONT "${pids[@]}" 2>/dev/null; fi; }
trap resume EXIT INT TERM
if [ ${#pids[@]} -gt 0 ]; then
  echo "quiet_cpu: pausing ${#pids[@]} background job(s): ${pids[*]}" >&2
  kill -STOP "${pids[@]}"
  sleep 1
fi
"$@"
