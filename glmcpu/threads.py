import os


def physical_cores():
    """Physical cores available to this process (hyper-thread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        path = f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list"
        try:
            with open(path) as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(c))
    return max(1, len(cores))


def resolve_threads(threads):
    """threads=None -> all physical cores; clamp to what numba was started with."""
    import numba
    from .errors import GlmcpuError
    n = physical_cores() if threads is None else threads
    if not isinstance(n, int) or n < 1:
        raise GlmcpuError(f"threads must be a positive integer, got {threads!r}")
    return min(n, numba.config.NUMBA_NUM_THREADS)
