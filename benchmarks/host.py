"""The machine a benchmark runs on: the CPU line every table states, and a process's memory from /proc."""

import os
import platform


def cpu():
    """CPU model, cores, the flags that decide TensorFlow's kernels, whether oneDNN is on, and Python."""
    flags = open("/proc/cpuinfo").read().split("flags\t\t: ")[1].split("\n")[0].split()
    model = open("/proc/cpuinfo").read().split("model name\t: ")[1].split("\n")[0]
    wanted = [flag for flag in ("avx512_bf16", "avx512_vnni", "amx_tile", "avx2") if flag in flags]
    # TensorFlow turns oneDNN on by default where the CPU has VNNI, AVX512_BF16 or AMX.
    default = "on" if {"avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile"} & set(flags) else "off"
    onednn = {"1": "on", "0": "off"}.get(os.environ.get("TF_ENABLE_ONEDNN_OPTS"), f"default ({default})")
    return f"{model} ({os.cpu_count()} cores; {', '.join(wanted)}; oneDNN {onednn}; {platform.python_version()})"


def status_gib(field, pid="self"):
    """A memory field of /proc/PID/status in GiB: VmRSS (resident), RssAnon (its anonymous part, the rest
    being mapped library and file pages), VmHWM (the peak resident so far)."""
    with open(f"/proc/{pid}/status") as status:
        return int(status.read().split(f"{field}:")[1].split()[0]) / 2**20
