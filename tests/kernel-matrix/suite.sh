#!/bin/sh
# The kernel-facing suite of the kernel matrix: runs redis-node-tuner against the kernel it is
# on and REPORTS what it sees, one machine-readable line per check (it never stops at a failed
# check; tests/kernel_matrix.rs compares the lines with expected.tsv):
#
#   RNT-RESULT <check> <pass|fail|n/a> <detail>
#   RNT-INFO <what> <detail>
#   RNT-END                                  (last: the suite got to its end)
#
# busybox sh (in the VM, started by vm.sh's init) or any POSIX sh on the host (as root, under
# tests/kernel_matrix.rs's host-knob guard: it changes the host's global knobs). Environment:
#   RNT_BIN        the redis-node-tuner binary (required)
#   RNT_STATE_DIR  an empty state directory (required)
#   RNT_TMP        where the agents' logs go (default /tmp)
#   RNT_WAIT       seconds a foreign write has to be corrected / named (default 5)
#   RNT_START_WAIT seconds an agent has to start and tune (default 60: TCG is slow)
set -eu
set -o pipefail

bin=${RNT_BIN:?RNT_BIN: the redis-node-tuner binary}
state=${RNT_STATE_DIR:?RNT_STATE_DIR: an empty state directory}
tmp=${RNT_TMP:-/tmp}
wait_s=${RNT_WAIT:-5}
start_wait=${RNT_START_WAIT:-60}
oc=/proc/sys/vm/overcommit_memory
somax=/proc/sys/net/core/somaxconn
thp=/sys/kernel/mm/transparent_hugepage
agent=

# One line, at most 300 characters.
oneline() { tr '\n\t' '  ' | cut -c1-300; }
result() { echo "RNT-RESULT $1 $2 $(printf '%s' "$3" | oneline)"; }
info() { echo "RNT-INFO $1 $(printf '%s' "$2" | oneline)"; }
rnt() { "$bin" --state-dir "$state" "$@"; }
# The selected word of a THP file ("always [madvise] never" -> madvise), else the whole value.
val() {
  v=$(cat "$1")
  case "$v" in *\[*) v=${v#*[}; v=${v%%]*} ;; esac
  echo "$v"
}
# Hundredths of a second since boot.
now_cs() {
  read -r up _ </proc/uptime
  echo "${up%.*}${up#*.}" | sed 's/^0*//; s/^$/0/'
}
elapsed() { t=$(($(now_cs) - $1)); echo "$((t / 100)).$(printf '%02d' $((t % 100))) s"; }
# Waits up to $1 seconds for the command "$2..." to succeed.
wait_until() {
  limit=$(($(now_cs) + $1 * 100))
  shift
  while ! "$@"; do
    [ "$(now_cs)" -lt "$limit" ] || return 1
    sleep 0.05
  done
}
value_is() { [ "$(val "$1")" = "$2" ]; }

stop_agent() {
  [ -n "$agent" ] || return 0
  kill -TERM "$agent" 2>/dev/null || true
  rc=0
  wait "$agent" || rc=$?
  agent=
  return "$rc"
}
trap 'if [ -n "$agent" ]; then kill -KILL "$agent" 2>/dev/null || true; fi' EXIT

kernel=$(uname -r)
info kernel "$kernel"
major=${kernel%%.*}
minor=${kernel#*.}
minor=${minor%%[!0-9]*}

# The per-size THP files (Linux 6.8+).
sizes=
if [ -d "$thp" ]; then
  for f in "$thp"/hugepages-*/enabled; do [ -f "$f" ] && sizes="$sizes $f"; done
fi
nsizes=$(echo $sizes | wc -w)

boot() {
  echo "overcommit=$(cat "$oc") somaxconn=$(cat "$somax") thp_enabled=$(val "$thp/enabled") thp_defrag=$(val "$thp/defrag")$(for f in $sizes; do
    d=${f%/enabled}
    printf ' %s=%s' "${d##*/}" "$(val "$f")"
  done)"
}
boot_values=$(boot)
info boot_values "$boot_values"

# 1. check on the untuned boot values: drift, exit 1.
rc=0
rnt check >"$tmp/check1.out" 2>&1 || rc=$?
if [ "$rc" -eq 1 ]; then result check_untuned pass "exit 1"; else result check_untuned fail "exit $rc: $(tail -n 3 "$tmp/check1.out")"; fi

# 2. apply, then check.
rc=0
rnt apply >"$tmp/apply.out" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then result apply pass "exit 0"; else result apply fail "exit $rc: $(tail -n 3 "$tmp/apply.out")"; fi
rc=0
rnt check >"$tmp/check2.out" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then result check_applied pass "exit 0"; else result check_applied fail "exit $rc: $(grep -v in_sync "$tmp/check2.out" | tail -n 3)"; fi
if [ -f "$state/originals.json" ]; then
  result journal pass "$state/originals.json"
else
  result journal fail "no originals.json in $state: $(ls "$state" 2>&1)"
fi

# 3. per-size THP: the files by kernel version, and check -o json agreeing.
if [ "$major" -gt 6 ] || { [ "$major" -eq 6 ] && [ "$minor" -ge 8 ]; }; then want_sizes=1; else want_sizes=0; fi
if [ "$want_sizes" -eq 1 ] && [ "$nsizes" -gt 0 ]; then
  result mthp_files pass "$nsizes per-size files (Linux $major.$minor >= 6.8)"
elif [ "$want_sizes" -eq 0 ] && [ "$nsizes" -eq 0 ]; then
  result mthp_files pass "no per-size files (Linux $major.$minor < 6.8)"
else
  result mthp_files fail "$nsizes per-size files on Linux $major.$minor"
fi
rc=0
rnt check -o json >"$tmp/check.json" 2>"$tmp/check.err" || rc=$?
njson=$(grep -o '"name": *"[^"]*hugepages-[^"]*"' "$tmp/check.json" | sort -u | wc -l) || njson=0
if [ ! -s "$tmp/check.json" ]; then
  result mthp_json fail "check -o json printed nothing (exit $rc): $(tail -n 2 "$tmp/check.err")"
elif [ "$njson" -eq "$nsizes" ]; then
  result mthp_json pass "check -o json lists $njson per-size knobs, $nsizes files"
else
  result mthp_json fail "check -o json lists $njson per-size knobs, $nsizes files"
fi

# 4. cgroup v2 only.
v1=$(awk '$3 == "cgroup" { printf "%s ", $2 }' /proc/mounts)
v2=$(awk '$3 == "cgroup2" { printf "%s ", $2 }' /proc/mounts)
if [ -z "$v1" ] && [ -n "$v2" ]; then
  result cgroup_v2_only pass "cgroup2 at $v2"
else
  result cgroup_v2_only fail "cgroup2 at ${v2:-nowhere}; v1 hierarchies at ${v1:-none}"
fi

# 5. restore: exit 0, the boot values back, the journal removed.
rc=0
rnt restore >"$tmp/restore.out" 2>&1 || rc=$?
if [ "$rc" -eq 0 ]; then result restore pass "exit 0"; else result restore fail "exit $rc: $(tail -n 3 "$tmp/restore.out")"; fi
now=$(boot)
if [ "$now" = "$boot_values" ]; then result restore_values pass "$now"; else result restore_values fail "now $now"; fi
if [ -f "$state/originals.json" ]; then result restore_journal_removed fail "originals.json still there"; else result restore_journal_removed pass "removed"; fi

# 6. The agent with the writer watch observing (a 1 h interval: only an event path corrects).
start_agent() { # mode log
  "$bin" run --no-kubernetes --interval 1h --writers "$1" --log-format json --listen "" \
    --state-dir "$state" >/dev/null 2>"$2" &
  agent=$!
}
tuned() { value_is "$oc" 1 && value_is "$thp/enabled" never && value_is "$thp/defrag" never; }
watch_reported() { grep -q '"source":"sysctl"' "$1" || ! kill -0 "$agent" 2>/dev/null; }
# RNT-RESULT watch_<source> lines and the overall `watch` line from the agent's log.
report_watch() { # prefix log
  all=pass
  summary=
  for s in inotify fanotify sysctl; do
    line=$(grep '"message":"writer watch \(active\|unavailable\)"' "$2" | grep "\"source\":\"$s\"" | head -n1 || true)
    if [ -z "$line" ]; then
      r=fail d="no writer watch line for $s"
    elif echo "$line" | grep -q '"message":"writer watch active"'; then
      r=pass d=active
    else
      reason=$(echo "$line" | sed -n 's/.*"reason":"\([^"]*\)".*/\1/p')
      full=$(echo "$line" | sed -n 's/.*"detail":"\(.*\)","[a-z_]*":.*/\1/p' | sed 's/\\n/\n/g')
      # The first line and, for a verifier's refusal, the line that says why.
      detail=$(echo "$full" | head -n1 | cut -c1-160)
      why=$(echo "$full" | grep -B1 '^verification time' | head -n1 || true)
      [ -z "$why" ] || detail="$detail ... $why"
      if [ "$reason" = not_requested ]; then r=n/a; else r=fail; fi
      d="unavailable: reason=$reason $detail"
    fi
    [ "$r" = fail ] && all=fail
    summary="$summary $s=${reason:-${d%% *}}"
    reason=
    result "$1_watch_$s" "$r" "$d"
  done
  result "$1_watch" "$all" "$summary"
  # A knob this kernel does not have (not_applicable) is no watcher's failure.
  missing=$(grep '"message":"writer watch: a knob file is not watched"' "$2" | sed -n 's/.*"error":"\([^"]*\)".*/\1/p' | head -n 2 || true)
  if [ -z "$missing" ]; then
    result "$1_watch_files" pass "no 'a knob file is not watched' warning"
  else
    result "$1_watch_files" fail "$missing"
  fi
}
# A foreign write from a shell of its own: "$1" is the file, "$2" the value; the writer's pid
# in $writer, its stderr in $tmp/writer.err, its exit code in $wrc.
foreign_write() {
  wrc=0
  # shellcheck disable=SC2016
  sh -c 'echo $$ >"$3/writer.pid"; echo "$2" >"$1"' sh "$1" "$2" "$tmp" 2>"$tmp/writer.err" || wrc=$?
  writer=$(cat "$tmp/writer.pid")
}
named() { # log knob-pattern pid
  grep '"message":"foreign write' "$1" | grep "\"knob\":\"[^\"]*$2" | grep -q "\"pid\":$3[,}]"
}
corrected_check() { # name file bad good log knob-pattern
  t0=$(now_cs)
  foreign_write "$2" "$3"
  if [ "$wrc" -ne 0 ]; then
    result "$1_corrected" fail "the foreign write failed: $(cat "$tmp/writer.err")"
  elif wait_until "$wait_s" value_is "$2" "$4"; then
    result "$1_corrected" pass "back to $4 after $(elapsed "$t0")"
  else
    result "$1_corrected" fail "still $(val "$2") after $wait_s s"
  fi
  if wait_until "$wait_s" named "$5" "$6" "$writer"; then
    line=$(grep '"message":"foreign write' "$5" | grep "\"pid\":$writer[,}]" | head -n1 || true)
    result "$1_named" pass "pid $writer $(echo "$line" | sed -n 's/.*"comm":"\([^"]*\)".*/comm \1/p') $(echo "$line" | sed -n 's/.*"message":"\([^"]*\)".*/(\1)/p')"
  else
    other=$(grep '"message":"foreign write' "$5" | grep "\"knob\":\"[^\"]*$6" | head -n1 | sed -n 's/.*"pid":\([0-9]*\).*/pid \1/p' || true)
    result "$1_named" fail "no foreign write line with pid $writer within $wait_s s${other:+ (a line names $other)}"
  fi
}

log=$tmp/agent-observe.log
start_agent observe "$log"
if wait_until "$start_wait" watch_reported "$log" && wait_until "$start_wait" tuned; then
  info observe_agent "started and tuned"
else
  info observe_agent "not tuned within $start_wait s: $(tail -n 3 "$log")"
fi
report_watch observe "$log"
corrected_check observe_overcommit "$oc" 0 1 "$log" overcommit_memory
corrected_check observe_thp "$thp/enabled" always never "$log" enabled
rc=0
stop_agent || rc=$?
info observe_agent_exit "$rc"
info observe_agent_log "$(grep -c . "$log") lines in $log"

# 7. The same agent with writers: lock: a foreign write is refused (EPERM), the value stays 1.
log=$tmp/agent-lock.log
start_agent lock "$log"
if wait_until "$start_wait" watch_reported "$log" && wait_until "$start_wait" tuned; then
  info lock_agent "started and tuned"
else
  info lock_agent "not tuned within $start_wait s: $(tail -n 3 "$log")"
fi
if grep -q '"message":"writers lock requested but not in force' "$log"; then
  line=$(grep '"message":"writers lock requested but not in force' "$log" | head -n1)
  result lock_active fail "not in force: reason=$(echo "$line" | sed -n 's/.*"reason":"\([^"]*\)".*/\1/p')"
elif grep -q '"source":"sysctl"' "$log"; then
  result lock_active pass "no 'not in force' line"
else
  result lock_active fail "the agent never reported its writer watch: $(tail -n 2 "$log")"
fi
foreign_write "$oc" 0
after=$(cat "$oc")
if [ "$wrc" -ne 0 ] && grep -q 'Operation not permitted' "$tmp/writer.err" && [ "$after" = 1 ]; then
  result lock_refused pass "EPERM, value stays 1"
else
  if [ "$wrc" -eq 0 ]; then
    result lock_refused fail "not refused: the write succeeded; value read right after: $after"
  else
    result lock_refused fail "the write failed (exit $wrc: $(cat "$tmp/writer.err")); value read right after: $after"
  fi
fi
rc=0
stop_agent || rc=$?
info lock_agent_exit "$rc"

# Leave the kernel as it was found (the host guard also puts the host's knobs back).
rc=0
rnt restore >"$tmp/restore2.out" 2>&1 || rc=$?
info final_restore "exit $rc"
echo RNT-END
