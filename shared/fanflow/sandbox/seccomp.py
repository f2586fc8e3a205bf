"""The seccomp filter of user code: the syscalls a code node never needs fail with EPERM.

Built once per worker with `pyseccomp` (ctypes bindings of libseccomp, which compiles the
rules into a BPF program for this machine's architecture) and handed to the zygote as
bytes; each forked run child installs it, after its limits are set and its privileges
dropped and right before user code starts (the zygote itself still needs `unshare` to
enter its user namespace). Denied: debugging and reading other processes (`ptrace`,
`process_vm_*`), mounts and namespaces (`mount`, `umount2`, `unshare`, `setns`, `clone`
with a namespace flag, `clone3`), kernel facilities (`kexec_*`, `bpf`, `keyctl`,
`add_key`, `request_key`, `perf_event_open`, `io_uring_*`, `userfaultfd`, module loading)
and every socket but AF_UNIX.
"""

from __future__ import annotations

import errno
import functools
import socket
import tempfile

from fanflow.sandbox.isolation import SandboxUnavailable

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "unshare",
    "setns",
    "pivot_root",
    "chroot",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "fsopen",
    "fsmount",
    "move_mount",
    "open_tree",
)
#: the CLONE_NEW* flags: a clone making a namespace is refused like unshare
CLONE_NAMESPACES = 0x7E020000


@functools.cache
def filter_program() -> bytes:
    """The BPF program of the filter; SandboxUnavailable where libseccomp is missing."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # ctypes raises OSError without libseccomp.so
        raise SandboxUnavailable(f"seccomp unavailable (pyseccomp/libseccomp): {exc}") from exc
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in DENIED:
        rules.add_rule(deny, name)
    rules.add_rule(deny, "socket", seccomp.Arg(0, seccomp.NE, socket.AF_UNIX))
    rules.add_rule(
        deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NAMESPACES, CLONE_NAMESPACES)
    )
    for flag in (0x10000000, 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000, 0x2000000):
        rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as exported:
        rules.export_bpf(exported)
        exported.seek(0)
        return exported.read()
