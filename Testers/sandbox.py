"""The sandbox of a case: shuts in the process that runs a submission's machines (Testers/child.py), so
that nothing the submission does can reach the grader. Standard library only; Linux for the namespaces,
the user and the subreaper.

    python3 -I -S -B Testers/sandbox.py --serve FD KIT   the grader's fork server, on the socket FD
    python3 -I -S -B Testers/sandbox.py --probe          prints whether namespaces can be made here (JSON)

The grader (Testers/isolation.py) starts one fork server per run, which imports the kit once and forks a
process for each case (run_one). That process forks the runner, which runs the case in the same
interpreter once it is shut in, and ends as the runner ended: its exit status, or its death by a signal.
Run as root with namespaces, it first enters new mount, network, process, IPC and host-name namespaces; a
first child becomes their process 1, builds a root of its own (the system's folders read-only, a fresh
/tmp, /dev and /proc, the stage and the kit's copy: nothing else of the machine, so neither the kit's
folder, nor the case files, nor the results), brings up loopback (the only network there), and forks the
runner. When that process 1 ends, the kernel ends every process left in the namespace, however it forked
or hid (setsid). Without namespaces the case's process is a child subreaper instead: whatever the runner
leaves behind is reparented there and killed, and, run as a user of its own, every process of that user.

The runner gets resource limits (memory, processes, open files, file size, no core files), its own
session, no descriptor but its standard ones and its report, and, given a user id, no privileges: no
groups, that user and group, and no new privileges.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Dict, List, NoReturn, Optional

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, \
    0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")
REPORT_FD = 3  # where a case's runner writes its report (Testers/child.py)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def _encoded(text: Optional[str]) -> Optional[bytes]:
    return text.encode() if text is not None else None


def mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str] = None) -> None:
    encode = _encoded
    _check(_libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
           f"mount {target}")


def unmount(target: str) -> None:
    """Detach a mount now, and drop it once nothing uses it any more."""
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


# ----------------------------------------------------------------------------------------------- probe

def probe() -> Dict[str, Any]:
    """Whether this process may make the namespaces and the mounts a jail needs, tried in a child."""
    if not sys.platform.startswith("linux"):
        return {"namespaces": False, "why": f"not Linux ({sys.platform})"}
    if os.geteuid() != 0:
        return {"namespaces": False, "why": "not root"}
    folder = tempfile.mkdtemp()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        why = ""
        try:
            unshare(NAMESPACES)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")  # gone with this process's namespace
        except OSError as error:
            why = str(error)
        os.write(write, why.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        why = answer.read().decode()
    os.waitpid(pid, 0)
    os.rmdir(folder)
    return {"namespaces": not why, "why": why}


# ------------------------------------------------------------------------------------------ the jail

def _folder(path: str, mode: int = 0o755) -> None:
    """A folder and its parents, each with `mode` whatever the umask: the runner's user must pass."""
    if not os.path.isdir(path):
        _folder(os.path.dirname(path), mode)
        os.mkdir(path)
        os.chmod(path, mode)


def build_jail(stage: str, kit: str, prefixes: List[str], tmp_mib: int) -> None:
    """In a new mount namespace, as root: a root of its own under stage/root, and chroot into it."""
    root = os.path.join(stage, "root")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    shown: List[str] = []
    for folder in list(SYSTEM_FOLDERS) + prefixes:
        if not os.path.lexists(folder) or any(folder == done or folder.startswith(done + "/") for done in shown):
            continue
        inside = root + folder
        if os.path.islink(folder):  # /bin -> usr/bin on a merged /usr
            _folder(os.path.dirname(inside))
            os.symlink(os.readlink(folder), inside)
        else:
            _folder(inside)
            mount(folder, inside, None, MS_BIND | MS_REC)
            mount(None, inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        shown.append(folder)
    dev = root + "/dev"
    _folder(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "size=64k,mode=755")
    for name in DEVICES:
        Path(dev, name).touch()
        mount(f"/dev/{name}", f"{dev}/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    for folder in (dev + "/shm", root + "/tmp"):
        _folder(folder)
        mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mib}m,mode=1777")
    _folder(root + "/proc", 0o555)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV)
    # The stage and the kit where they are outside (the kit's modules, imported before the fork, know
    # their files by those paths); mounted last, in case they lie under /tmp.
    _folder(root + stage)
    mount(stage, root + stage, None, MS_BIND)  # not MS_REC: stage/root is not seen inside
    _folder(root + kit)
    mount(kit, root + kit, None, MS_BIND)
    mount(None, root + kit, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    os.chroot(root)
    os.chdir("/")


def loopback_up() -> None:
    """A new network namespace has a loopback interface, down: bring it up, the only network there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


# ---------------------------------------------------------------------------------------- the runner

def become_runner(config: Dict[str, Any]) -> NoReturn:
    """In a forked child: limits, a session of its own, no privileges; then run the case (Testers/child.py)
    in this very interpreter, which saves starting another."""
    try:
        os.setsid()
        # Nothing of the sandbox's own (a status pipe, a descriptor before it was moved to 0-3) may reach the
        # submission: it could forge how its case ended.
        os.closerange(REPORT_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        limits = config["limits"]
        mib = 1 << 20
        resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mib"] * mib,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"],) * 2)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mib"] * mib,) * 2)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        uid = config["uid"]
        if uid is not None:  # counted per user: only a user of its own makes it a limit of this runner's
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"],) * 2)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        tmp = "/tmp" if config["namespaces"] else os.path.join(config["stage"], "tmp")
        os.environ.update(HOME=tmp, TMPDIR=tmp)
        tempfile.tempdir = None
        os.chdir(os.path.join(config["stage"], "submission"))
        from Testers.child import main as run_case
    except BaseException:
        traceback.print_exc()
        os._exit(125)
    run_case(Path(config["stage"]), REPORT_FD)


def kill_descendants() -> None:
    """End every process below this one and reap it: a child subreaper, whatever a runner left was
    reparented here, however it forked or hid (setsid)."""
    for _ in range(100):
        descendants = _descendants(os.getpid())
        for pid in descendants:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not descendants:
            return


def kill_user(uid: int) -> None:
    """End every process of a sandbox's user id, wherever it hangs in the tree: a process of that user
    signals them all but itself (kill -1). Only from a process with one thread: it forks."""
    for _ in range(100):
        if not _processes_of(uid):
            return
        killer = os.fork()
        if killer == 0:
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(killer, 0)


def _parents() -> Dict[int, int]:
    """pid -> parent pid, of every process in /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _descendants(root: int) -> List[int]:
    parents = _parents()
    found: List[int] = []
    frontier = [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _processes_of(uid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def mirror(status: int) -> NoReturn:
    """End as the runner ended: the same exit status, or death by the same signal."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (signal.SIGKILL, signal.SIGSTOP):  # these two have no handler to reset
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)  # a signal whose default is to be ignored
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 125)


def run_one(config: Dict[str, Any]) -> NoReturn:
    """In a process forked for one case: shut the runner in, and end as it ended. SIGTERM (the grader
    ending the case) ends the runner and all it started."""
    os.setsid()  # out of the fork server's process group, which a runner could signal
    below: List[int] = []  # the process to end on SIGTERM, once forked

    def end_below(number: int, frame: Any) -> None:
        for pid in below:  # the wait below then returns, and what the runner left is ended
            os.kill(pid, signal.SIGKILL)
        if not below:
            os._exit(128 + number)

    signal.signal(signal.SIGTERM, end_below)
    if config["namespaces"]:
        unshare(NAMESPACES)
        read, write = os.pipe()
        init = os.fork()
        if init == 0:  # process 1 of the new namespaces
            os.close(read)
            try:
                prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # run_one ends: the namespace and all in it end
                build_jail(config["stage"], config["kit"], config["prefixes"], config["limits"]["file_mib"])
                loopback_up()
                runner = os.fork()
                if runner == 0:
                    os.close(write)
                    become_runner(config)
                while True:  # reap whatever is reparented here until the runner ends
                    pid, status = os.wait()
                    if pid == runner:
                        break
                os.write(write, str(status).encode())
            except BaseException:
                traceback.print_exc()
            os._exit(0)  # and the kernel ends every process left in the namespace
        below.append(init)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            said = answer.read()
        os.waitpid(init, 0)
        mirror(int(said) if said.isdigit() else 125 << 8)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    runner = os.fork()
    if runner == 0:
        become_runner(config)
    below.append(runner)
    while True:
        try:
            pid, status = os.waitpid(runner, 0)
            break
        except InterruptedError:
            continue
    kill_descendants()
    if config["uid"] is not None:
        kill_user(config["uid"])
    mirror(status)


def serve(channel: socket.socket, kit: str) -> None:
    """The grader's fork server: one process that never runs a submission, with the kit imported once, forks
    a process for each case the grader asks for (run_one) and says how each ended. Starting and importing
    afresh for each case would cost more than most cases take.

    The grader sends a case's config (JSON) with two descriptors, its report pipe and its output pipe; this
    answers {"case": N, "pid": P} at once, and {"case": N, "status": S} (as os.waitpid gives it) at its end.
    {"kill": N, "signal": S, "user": U or null} ends case N's process if it has not ended yet (only this
    process knows that, since it reaps them: a pid reaped may be another process's soon) and, given a
    user id, every process of that user. When the grader closes the channel, every case still running is
    ended, and so is anything a case left that was reparented here."""
    sys.path.insert(0, kit)
    import Testers.child
    import Testers.run  # noqa: F401

    def send(message: Dict[str, Any]) -> None:
        channel.sendall(json.dumps(message).encode())

    subreaper = sys.platform.startswith("linux")
    if subreaper:  # what a case's process leaves when a runner kills it (it can, run as the same user) ends here
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    woken, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda number, frame: None)
    cases: Dict[int, int] = {}  # pid -> the grader's number for the case
    while True:
        ready, _, _ = select.select([channel.fileno(), woken], [], [])
        if woken in ready:
            os.read(woken, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid in cases:  # else an orphan reparented here
                    send({"case": cases.pop(pid), "status": status})
        if channel.fileno() in ready:
            message, descriptors, _, _ = socket.recv_fds(channel, 1 << 16, 2)
            if not message:
                for pid in cases:
                    os.kill(pid, signal.SIGTERM)
                if subreaper:
                    kill_descendants()
                return
            request = json.loads(message)
            if "kill" in request:
                for pid, number in cases.items():
                    if number == request["kill"]:
                        os.kill(pid, request["signal"])
                if request["user"] is not None:
                    kill_user(request["user"])
                continue
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for descriptor in (channel.detach(), woken, wake):
                    os.close(descriptor)
                os.dup2(descriptors[1], 1)
                os.dup2(descriptors[1], 2)
                os.dup2(descriptors[0], REPORT_FD)
                run_one(request)
            for descriptor in descriptors:
                os.close(descriptor)
            cases[pid] = request["case"]
            send({"case": request["case"], "pid": pid})


def main() -> None:
    if sys.argv[1:] == ["--probe"]:
        print(json.dumps(probe()))
    else:
        serve(socket.socket(fileno=int(sys.argv[2])), sys.argv[3])  # --serve FD KIT


if __name__ == "__main__":
    main()
