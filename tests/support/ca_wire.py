"""Channel Access commands as the bytes a server sends, built with caproto's own classes."""

from __future__ import annotations

import socket
import threading

import caproto as ca


def wire(commands: list[object]) -> bytes:
    """Header and payload buffers of each command, concatenated."""
    out = bytearray()
    for command in commands:
        out += bytes(command.header)  # type: ignore[attr-defined]
        for buf in command.buffers:  # type: ignore[attr-defined]
            out += bytes(buf)
    return bytes(out)


class BrokenCaServer:
    """A CA server that answers searches for `names` (once each) and then fails the
    circuit: `refuse` points the client at a TCP port nobody listens on (an IOC that died
    after answering), otherwise at one that accepts and never says a word (a hung IOC).

    Real sockets on 127.0.0.1, built from caproto's own command classes; it stands in for
    a misbehaving server, which no real one can be made into on demand.
    """

    def __init__(self, names: list[str], *, refuse: bool) -> None:
        self.names = set(names)
        self.answered: list[str] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(0.2)
        self.udp_port = int(self.udp.getsockname()[1])
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp_port = int(self.tcp.getsockname()[1])
        if refuse:
            self.tcp.close()  # the port stays unused for the test's short life
        else:
            self.tcp.listen(8)  # the kernel completes handshakes; nothing ever answers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="broken-ca")
        self._thread.start()

    def _serve(self) -> None:
        server = ca.Broadcaster(our_role=ca.SERVER)
        while not self._stop.is_set():
            try:
                data, address = self.udp.recvfrom(65536)
            except OSError:
                continue
            replies: list[object] = []
            for command in server.recv(data, address):
                name = getattr(command, "name", None)
                if isinstance(command, ca.SearchRequest) and name in self.names:
                    self.names.discard(name)
                    self.answered.append(name)
                    replies.append(ca.SearchResponse(self.tcp_port, "127.0.0.1", command.cid, 13))
            if replies:
                self.udp.sendto(wire([ca.VersionResponse(13), *replies]), address)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()
