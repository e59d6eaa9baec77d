"""Sending HL7 v2 messages over MLLP and reading their acknowledgements (blocking sockets).

Used to send ZAM^Z01 receipts to the RIS, by the benchmark and by tests. One connection per
call; each message waits for its ACK before the next is sent, as MLLP senders do.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Iterable

from drimbox.errors import DrimboxError
from drimbox.hl7.framing import FrameDecoder, Oversize, frame

#: An ACK (or a ZAM's ACK) is small; anything bigger is not one.
MAX_ACK_BYTES = 1024 * 1024
_CHUNK = 64 * 1024


class MllpError(DrimboxError):
    """The peer did not acknowledge: refused or lost connection, silence past the timeout, or not MLLP."""


def send_message(host: str, port: int, message: bytes, timeout: float = 30.0) -> bytes:
    """Send one message, return its acknowledgement (the frame content)."""
    return send_messages(host, port, [message], timeout)[0]


def send_messages(host: str, port: int, messages: Iterable[bytes], timeout: float = 30.0) -> list[bytes]:
    """Send `messages` on one connection, each after the previous one's ACK; return the ACKs in order.

    `timeout` applies to connecting and to each wait for the peer.
    """
    acks: list[bytes] = []
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            decoder = FrameDecoder(MAX_ACK_BYTES)
            received: deque[bytes] = deque()
            for message in messages:
                sock.sendall(frame(message))
                acks.append(_next_ack(sock, decoder, received))
    except OSError as exc:
        raise MllpError(f"MLLP peer {host}:{port}: {exc or type(exc).__name__}") from exc
    return acks


def _next_ack(sock: socket.socket, decoder: FrameDecoder, received: deque[bytes]) -> bytes:
    while not received:
        data = sock.recv(_CHUNK)
        if not data:
            raise MllpError("the MLLP peer closed the connection before acknowledging")
        for item in decoder.feed(data):
            if isinstance(item, Oversize):
                raise MllpError(f"the MLLP peer answered more than {MAX_ACK_BYTES} bytes in one frame")
            received.append(item.payload)
    return received.popleft()
