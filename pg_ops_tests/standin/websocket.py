"""Pod exec over WebSocket, the way the official client's `kubernetes.stream.stream` speaks it
(the v4.channel.k8s.io subprotocol): one binary message per output chunk, its first byte the
channel (1 stdout, 2 stderr, 3 the final Status carrying the exit code), then a close frame.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SUBPROTOCOL = "v4.channel.k8s.io"
STDOUT, STDERR, ERROR = 1, 2, 3


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """A server frame (unmasked, final)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def exit_status(code: int) -> dict:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": f"command terminated with non-zero exit code: error executing command, exit status {code}",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


def serve_exec(handler, run) -> None:
    """Complete the upgrade on `handler` (a BaseHTTPRequestHandler), run the command through
    `run() -> (exit code, stdout bytes, stderr bytes)`, stream the result, close."""
    handler.send_response(101, "Switching Protocols")
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept_key(handler.headers["Sec-WebSocket-Key"]))
    handler.send_header("Sec-WebSocket-Protocol", SUBPROTOCOL)
    handler.end_headers()
    code, out, err = run()
    messages = [(STDOUT, out), (STDERR, err), (ERROR, json.dumps(exit_status(code)).encode())]
    for channel, data in messages:
        if data:
            handler.wfile.write(frame(0x2, bytes([channel]) + data))
    handler.wfile.write(frame(0x8, struct.pack("!H", 1000)))
    handler.wfile.flush()
    handler.close_connection = True
