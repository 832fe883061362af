# What the benchmark scripts share; `source`d by them, not run.

# Installs GNU time (/usr/bin/time: wall and CPU time, peak RSS) if it is missing.
need_gnu_time() {
  if [ ! -x /usr/bin/time ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time
  fi
}

# Prints the header line of a benchmark's output: date, cores, CPU model, then "$*".
machine_header() {
  local cpu
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $cpu${*:+; $*}"
}

# Reads FILE into the page cache right before a timed run, so the run measures the engine and
# not the disk. The 2-vCPU VMs we measure on drop a file's idle cached pages within a minute
# or two, and reading the 5M-line log (2.9 GB) cold took 4.9 s, 4.6 s of it kernel CPU, where
# a cached read takes 0.35 s: a cold replay spent that CPU in `read` on the two cores it
# shares with the workers (see BENCHMARKS.md, session 23).
warm_input() {
  cat "$1" >/dev/null
}
