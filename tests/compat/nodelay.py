"""Prints TCP_NODELAY of the daemon's side of a new connection, read from the daemon's own socket
(pidfd_getfd, as root), and of this client's side as a control (Nagle is on by default).

usage: nodelay.py PID PORT   ->   "server=1 client=0"
"""
import ctypes, os, socket, sys, time

pid, port = int(sys.argv[1]), int(sys.argv[2])
c = socket.create_connection(("127.0.0.1", port))
cport = c.getsockname()[1]
want_local, want_remote = ":%04X" % port, ":%04X" % cport
deadline = time.time() + 10
fd_num = None
while fd_num is None:
    inode = None
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        f = line.split()
        if f[1].endswith(want_local) and f[2].endswith(want_remote):
            inode = f[9]
    if inode:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    fd_num = int(fd)
            except OSError:
                pass
    if fd_num is None:
        if time.time() > deadline:
            sys.exit("the daemon's side of the connection was not found")
        time.sleep(0.02)
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(pid)
SYS_pidfd_getfd = 438
fd = libc.syscall(SYS_pidfd_getfd, pidfd, fd_num, 0)
if fd < 0:
    sys.exit(f"pidfd_getfd: errno {ctypes.get_errno()}")
s = socket.socket(fileno=fd)
server = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
client = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
print(f"server={int(bool(server))} client={int(bool(client))}")
