"""The LSP wire, hardened: framing that resynchronises, and one answer for every request.

pygls 2.1 is the protocol engine; this module replaces the two places where a hostile or
buggy client could stall or fool it (upstream, ``pygls.io_.run_async`` and
``JsonRPCProtocol.handle_message`` would want the same changes):

- **Framing.** pygls' reader matches ``Content-Length: N\\r\\n`` exactly, so after a bad frame
  (a short, negative or non-numeric length, a lower-case or LF-only header, a body with no
  header) it ignores every later message until a stray CRLF; a 20-digit length made it exit.
  :func:`read_messages` reads header names case-insensitively with CRLF or LF, bounds the
  length, and after garbage resynchronises on the next ``Content-Length`` header, wherever it
  starts in a line. A body that swallowed the start of the next frame gives it back.
- **Answers.** pygls drops, without a reply, a request whose params fail validation or that
  comes after ``shutdown``, and accepts a second ``initialize``. :class:`DiffillProtocol`
  answers each with the JSON-RPC error the spec names (ParseError, InvalidRequest,
  InvalidParams, ServerNotInitialized), without a traceback in the log for a user's mistake.
  A message that cannot be read (not UTF-8, not JSON, an empty body, nested too deeply for
  the parser) is answered with ``id: null``, as JSON-RPC 2.0 asks.
- **Cancellation.** pygls runs ``workspace/executeCommand`` as a generator around the
  command, so ``$/cancelRequest`` cancelled the wrapper and the command ran on (a rewrite
  applied its edit after the client had cancelled it). Here the command is the request's own
  task: cancelling it stops the daemon's work (see ``daemon_client``) and nothing is applied.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import sys
import threading
from typing import Any, BinaryIO

import cattrs
from lsprotocol import types
from lsprotocol.types import ResponseErrorMessage
from pygls.exceptions import (JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcParseError, JsonRpcServerNotInitialized)
from pygls.io_ import StdoutWriter
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import (JsonRPCNotification, JsonRPCRequestMessage,
                                     JsonRPCResponseMessage)
from pygls.protocol.language_server import _prepare_command_arguments

from .protocol import is_message_id

log = logging.getLogger("diffill.jsonrpc")

MAX_BODY = 128 * 2**20
"""Largest message accepted (bytes). Documents over ``lsp.FULL_TEXT_LIMIT`` characters are
already sent to the model as a slice; this only stops a length that would exhaust memory."""
MAX_HEADER_LINE = 8192
"""Header lines are short; a longer run of bytes with no newline is garbage and dropped."""
CHUNK = 65536

HEADER = re.compile(rb"content-length[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
DECODER = json.JSONDecoder()


class FrameReader:
    """Bytes from a stream with the three reads framing needs, over a buffer this class owns
    (so a bounded ``readline`` and giving bytes back are possible)."""

    def __init__(self, read_some) -> None:
        self._read_some = read_some  # async () -> bytes; b"" at end of stream
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._read_some()
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def readline(self, limit: int) -> bytes:
        """Up to and including the next ``\\n``, or ``limit`` bytes if no newline comes first,
        or what is left at the end of the stream."""
        while True:
            nl = self._buf.find(b"\n", 0, limit)
            if nl >= 0:
                return self._take(nl + 1)
            if len(self._buf) >= limit or not await self._fill():
                return self._take(min(limit, len(self._buf)))

    async def readexactly(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of the stream."""
        while len(self._buf) < n and await self._fill():
            pass
        return self._take(min(n, len(self._buf)))

    def unread(self, data: bytes) -> None:
        self._buf[:0] = data

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def stdin_reader(stdin: BinaryIO) -> FrameReader:
    loop = asyncio.get_running_loop()
    read1 = getattr(stdin, "read1", stdin.read)
    return FrameReader(lambda: loop.run_in_executor(None, read1, CHUNK))


async def read_messages(reader: FrameReader, protocol: "DiffillProtocol",
                        stop: threading.Event | None = None) -> None:
    """Read frames until the stream ends and hand each body to ``protocol.feed``."""
    length: int | None = None
    while stop is None or not stop.is_set():
        line = await reader.readline(MAX_HEADER_LINE)
        if not line:
            return
        match = HEADER.search(line)
        if match:
            value = match.group(1).strip()
            if value.isdigit() and len(value) <= 12 and int(value) <= MAX_BODY:
                length = int(value)
            else:
                log.warning("dropped a frame with Content-Length %r (a number up to %d is "
                            "expected)", value[:40].decode("latin-1"), MAX_BODY)
                length = None
            continue
        if line.strip():
            # Another header (Content-Type) keeps the frame; anything else is garbage.
            if length is not None and b":" not in line:
                log.warning("dropped a frame whose header is not 'Name: value'")
                length = None
            continue
        if length is None:
            continue  # a blank line outside a frame
        body = await reader.readexactly(length)
        if len(body) < length:
            return  # the stream ended inside the frame: nobody is left to answer
        length = None
        try:
            rest = protocol.feed(body)
        except Exception:  # noqa: BLE001 - a bug here must not end the session
            log.exception("could not handle a message")
            rest = None
        if rest:
            reader.unread(rest)


def serve_stdio(server, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """``LanguageServer.start_io`` with :func:`read_messages` as the reader."""
    server._stop_event = stop = threading.Event()
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

    async def main() -> None:
        await read_messages(stdin_reader(stdin or sys.stdin.buffer), server.protocol, stop)

    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("the client closed the connection; shutting down")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.shutdown()


def serve_tcp(server, host: str, port: int) -> None:
    """``LanguageServer.start_tcp`` (one client at a time, for debugging) with the same reader."""
    server._stop_event = stop = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)  # as pygls' own start_tcp does
        await read_messages(FrameReader(lambda: reader.read(CHUNK)), server.protocol, stop)
        server.shutdown()

    async def main() -> None:
        server._server = await asyncio.start_server(connection, host, port)
        log.info("serving LSP on %s:%d", host, port)
        async with server._server:
            await server._server.serve_forever()

    try:
        asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        pass


def structure_problem(exc: BaseException, path: str = "$") -> str:
    """What failed when JSON was structured into LSP types: cattrs' path to each bad field
    (the first five), else the exception itself."""
    if isinstance(exc, cattrs.ClassValidationError):
        lines = cattrs.transform_error(exc, path=path)
        return "; ".join(line.replace(f"{path}.{path}", path) for line in lines[:5])
    return f"{type(exc).__name__}: {exc}"


class DiffillProtocol(LanguageServerProtocol):
    """pygls' LSP protocol, answering every request exactly once (see the module docs)."""

    def __init__(self, server, converter) -> None:
        super().__init__(server, converter)
        self.initialize_seen = False

    # ------------------------------------------------------------ input

    def feed(self, body: bytes) -> bytes | None:
        """Handle one frame's body. Returns bytes that belong to the next frame: a
        Content-Length too long runs into the next header, which must not be lost."""
        # A message that cannot be read has no id the server may trust: its error goes out
        # with ``id: null``, as JSON-RPC 2.0 says (a guess could answer someone else's id).
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._reject(None, JsonRpcParseError, f"the message is not UTF-8 (byte {exc.start})")
            return None
        stripped = text.lstrip()
        try:
            data, end = DECODER.raw_decode(stripped)
        except RecursionError:
            self._reject(None, JsonRpcInvalidRequest, "the message is nested too deeply")
            return None
        except ValueError as exc:
            nxt = HEADER.search(body, 1)  # cut short: the next frame may start inside
            rest = body[nxt.start():] if nxt else None
            self._reject(None, JsonRpcParseError, f"the message is not JSON: {exc}")
            return rest
        self._dispatch(data)
        rest = stripped[end:]
        if rest.strip():
            log.warning("a frame's Content-Length ran %d bytes into the next frame",
                        len(rest.encode()))
            return rest.lstrip().encode()
        return None

    def _dispatch(self, data: Any) -> None:
        if not isinstance(data, dict):
            self._reject(None, JsonRpcInvalidRequest, "a message is a JSON object (batches are "
                         "not part of LSP)")
            return
        mid = data.get("id")
        if "id" in data and not is_message_id(mid):
            self._reject(None, JsonRpcInvalidRequest, "a message id is a number or a string")
            return
        method = data.get("method")
        is_request = "id" in data and "method" in data
        if "method" in data and not isinstance(method, str):
            if "id" in data:
                self._reject(mid, JsonRpcInvalidRequest, "method must be a string")
            return
        if data.get("jsonrpc") != self.VERSION:
            if is_request:
                self._reject(mid, JsonRpcInvalidRequest, 'jsonrpc must be "2.0"')
            return
        if "method" not in data:  # a response to one of our requests
            kind = ResponseErrorMessage if "error" in data else \
                self._result_types.pop(mid, None) or JsonRPCResponseMessage
        else:
            kind = self.get_message_type(method) or \
                (JsonRPCRequestMessage if "id" in data else JsonRPCNotification)
        try:
            message = self._converter.structure(data, kind)
        except Exception as exc:  # noqa: BLE001 - any failure is the client's message
            problem = structure_problem(exc, "params")
            if is_request:
                self._reject(mid, JsonRpcInvalidParams, f"{method}: {problem}")
            elif "method" in data:
                log.warning("dropped a %s notification: %s", method, problem)
            else:  # nobody to answer
                log.warning("dropped a malformed response (id %r): %s", mid, problem)
            return
        self.handle_message(message)

    def _reject(self, mid: Any, error: type[JsonRpcException], message: str) -> None:
        log.warning("answered %s: %s", error.__name__, message)
        self._send_response(mid, error=error(message=message).to_response_error())

    # ------------------------------------------------------------ lifecycle

    def handle_message(self, message) -> None:
        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")
        if self._shutdown and method != types.EXIT:
            if is_request:
                self._reject(message.id, JsonRpcInvalidRequest,
                             f"{method} after shutdown: the server only takes exit now")
            return
        if method == types.INITIALIZE and is_request:
            if self.initialize_seen:
                self._reject(message.id, JsonRpcInvalidRequest,
                             "the server is already initialized")
                return
            self.initialize_seen = True
        elif not self.initialize_seen and method not in (None, types.EXIT):
            if is_request:
                self._reject(message.id, JsonRpcServerNotInitialized,
                             f"{method} before initialize")
            return
        if method == types.CANCEL_REQUEST:
            target = getattr(getattr(message, "params", None), "id", None)
            if not is_message_id(target):
                log.warning("dropped a $/cancelRequest whose id is %r", type(target).__name__)
                return
        super().handle_message(message)

    # ------------------------------------------------------------ answers

    def _send_handler_result(self, future, *, msg_id) -> None:
        """A JsonRpcException is the answer the handler chose (a user's mistake, a stale
        document): send it without pygls' traceback in the log."""
        if not future.cancelled() and isinstance(future.exception(), JsonRpcException):
            self._request_futures.pop(msg_id, None)
            exc = future.exception()
            log.info("request %s: %s", msg_id, exc)
            self._send_response(msg_id, error=exc.to_response_error())
            return
        super()._send_handler_result(future, msg_id=msg_id)

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams) -> Any:
        """The command runs as this request's task, so ``$/cancelRequest`` reaches it."""
        handler = self.fm.commands.get(params.command)
        if handler is None:
            raise JsonRpcInvalidParams(message=f"unknown command {params.command!r}")
        try:
            args, kwargs = _prepare_command_arguments(handler, params, self._converter)
        except Exception as exc:  # noqa: BLE001
            raise JsonRpcInvalidParams(message=f"{params.command}: {exc}") from None
        result = handler(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
