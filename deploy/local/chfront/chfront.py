#!/usr/bin/env python3
"""chfront: the ClickHouse HTTP interface, the part the `clickhouse` crate uses, in front of chDB.

A local stand-in for a ClickHouse server, not a server: chDB (the real ClickHouse 26.9 engine,
in-process) has no server program of its own, so this speaks just enough of the HTTP interface
for Boomerang's tests and local runs. It is NOT for production: there is no native protocol, no
users, roles or quotas, and no TLS.

Like a ClickHouse server, it runs several queries at once (`--connections`, each request on a
chDB connection of its own while it runs): a long SELECT (the sink's analytics refresh) does not
hold up an insert. Queries beyond that many wait for a connection.

What it speaks:
- `GET /ping` -> `Ok.`
- `GET|POST /` with SQL in `?query=` and/or the body, as ClickHouse does: when both are given
  the body continues the query (for an INSERT, the body is its data).
- URL parameters: `database`, `default_format`, `param_NAME` (server-side `{NAME:Type}`
  parameters, also from a multipart/form-data body), `decompress=1`, and any other name as a
  query-level setting (applied with SET for this query only, then reset).
- Request bodies plain (Content-Length) or chunked; with `decompress=1` in ClickHouse's
  compressed-block framing (16-byte CityHash128 checksum, checked; method byte 0x82 = LZ4 or
  0x02 = none; u32 size of the block with its 9-byte header; u32 raw size). INSERT bodies are
  streamed into the table.
- Errors as ClickHouse sends them: HTTP 500, `X-ClickHouse-Exception-Code`, the message as body.

Run: python chfront.py --listen 127.0.0.1:18123 --data DIR
"""

import argparse
import email.parser
import email.policy
import http.server
import json
import os
import queue
import re
import signal
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

import chdb
import chdb._chdb
import lz4.block
from clickhouse_cityhash.cityhash import CityHash128

# Parameters of the HTTP interface that are not settings (ClickHouse's HTTPHandler list).
NOT_SETTINGS = {
    "query",
    "database",
    "default_format",
    "user",
    "password",
    "quota_key",
    "query_id",
    "stacktrace",
    "compress",
    "decompress",
    "session_id",
    "session_timeout",
    "session_check",
    "buffer_size",
    "wait_end_of_query",
    "role",
    "client_protocol_version",
    "http_headers_progress_interval_ms",
}
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
EXCEPTION_CODE = re.compile(r"Code: (\d+)\.")
# An INSERT whose data follows in the request body: everything up to `FORMAT name`.
INSERT_WITH_FORMAT = re.compile(
    r"^\s*(INSERT\s.*?)\s+FORMAT\s+([A-Za-z0-9_]+)\s*$", re.IGNORECASE | re.DOTALL
)
# INSERT INTO [TABLE] <table> [(<columns>)] [SETTINGS ...]
INSERT_TARGET = re.compile(
    r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?"
    r"(?P<table>(?:`(?:[^`\\]|\\.)+`|[A-Za-z0-9_]+)(?:\.(?:`(?:[^`\\]|\\.)+`|[A-Za-z0-9_]+))?)"
    r"\s*(?:\((?P<columns>[^)]*)\))?\s*(?P<settings>SETTINGS\s.*)?$",
    re.IGNORECASE | re.DOTALL,
)
INSERT_PREFIX = re.compile(r"^\s*INSERT\s", re.IGNORECASE)
FORMAT_CLAUSE = re.compile(r"\sFORMAT\s+[A-Za-z0-9_]+\s*;?\s*$", re.IGNORECASE)

COMPRESSED_CHECKSUM_BYTES = 16
COMPRESSED_HEADER_BYTES = 9
METHOD_LZ4 = 0x82
METHOD_NONE = 0x02
READ_PIECE_BYTES = 1 << 20

# Codes from ClickHouse's ErrorCodes.cpp for errors this front end raises itself.
CODE_BAD_ARGUMENTS = 36
CODE_CHECKSUM_DOESNT_MATCH = 40
CODE_CANNOT_DECOMPRESS = 271
CODE_UNKNOWN_EXCEPTION = 1002

# Queries run at once by default: the sink's inserts, its analytics refresh, a report, a test.
DEFAULT_CONNECTIONS = 4


class QueryError(Exception):
    """An error to answer as ClickHouse would: its code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def exception_code(message):
    match = EXCEPTION_CODE.search(message)
    return int(match.group(1)) if match else CODE_UNKNOWN_EXCEPTION


class Engine:
    """chDB connections to one data directory, each used by one request at a time.

    chDB runs one embedded server per process; every connection to its path is a client of it,
    with its own current database and settings, and their queries run side by side.
    """

    def __init__(self, data_dir, connections=DEFAULT_CONNECTIONS):
        chdb._chdb.set_signal_handlers_enabled(0)
        in_memory = data_dir.startswith(":memory:") or not data_dir
        # Where INSERT bodies wait to be inserted (see `Session._insert`).
        if in_memory:
            spool_dir = tempfile.gettempdir()
        else:
            spool_dir = os.path.join(data_dir, "insert-spool")
            os.makedirs(spool_dir, exist_ok=True)
            # A spool file outlives its session only when chfront was killed: this data
            # directory is this process's alone, so what is left there is stale.
            for name in os.listdir(spool_dir):
                if name.startswith("chfront-insert-"):
                    try:
                        os.unlink(os.path.join(spool_dir, name))
                    except OSError:
                        pass
        # An in-memory engine is not a path other connections could share: one connection.
        count = 1 if in_memory else max(1, connections)
        self.sessions = [
            Session(chdb.connect(data_dir), spool_dir) for _ in range(count)
        ]
        # Last in, first out: a light load keeps to the connections already warm.
        self.idle = queue.LifoQueue()
        for session in self.sessions:
            self.idle.put(session)
        version, _ = self.run("SELECT version()", "TSV", {}, {}, None, None)
        self.version = version.decode().strip()

    def close(self):
        # Waits for every connection to come back from its request.
        for _ in self.sessions:
            self.idle.get().close()

    def run(self, sql, output_format, params, settings, database, insert_body):
        """Runs one statement on an idle connection (waiting for one if none is)."""
        session = self.idle.get()
        try:
            return session.run(
                sql, output_format, params, settings, database, insert_body
            )
        finally:
            self.idle.put(session)


class Session:
    """One chDB connection; `USE` and `SET` apply to it, so it serves one request at a time."""

    def __init__(self, connection, spool_dir):
        self.connection = connection
        # This connection's INSERT bodies wait here, one at a time: the same file, written over
        # in place. A fresh temporary file per INSERT had the kernel find new pages for every
        # body, and on this workplace's virtual machines a page the guest has not touched
        # before costs far more than the copy: 80% of chfront's CPU in a 1M-event drain went
        # to writing spool files (`perf`, 2026-12-04), about 130 ms per 15 MB body, against
        # 2 ms written over an existing file's pages.
        descriptor, self.spool_path = tempfile.mkstemp(
            prefix="chfront-insert-", dir=spool_dir
        )
        self.spool = os.fdopen(descriptor, "w+b")

    def close(self):
        self.connection.close()
        self.spool.close()
        try:
            os.unlink(self.spool_path)
        except OSError:
            pass

    def run(self, sql, output_format, params, settings, database, insert_body):
        """Runs one statement; `insert_body` is an iterator of data chunks for an INSERT."""
        applied = []
        try:
            if database:
                self._query(f"USE {quote_identifier(database)}", "TSV", {})
            for name, value in settings.items():
                self._query(f"SET {name} = {quote_string(value)}", "TSV", {})
                applied.append(name)
            if insert_body is not None:
                return self._insert(sql, insert_body)
            return self._query(sql, output_format, params)
        finally:
            # Settings are for this query only: the connection outlives it.
            for name in applied:
                try:
                    self._query(f"SET {name} = DEFAULT", "TSV", {})
                except QueryError:
                    pass
            if database:
                try:
                    self._query("USE default", "TSV", {})
                except QueryError:
                    pass

    def _query(self, sql, output_format, params):
        try:
            result = self.connection.query(sql, output_format, params=params)
        except Exception as error:  # chDB raises ChdbError or RuntimeError
            message = str(error)
            raise QueryError(exception_code(message), message) from None
        summary = {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": str(result.rows_written()),
            "written_bytes": str(result.bytes_written()),
            "elapsed_ns": str(int(result.elapsed() * 1e9)),
        }
        return result.bytes(), summary

    def _insert(self, sql, insert_body):
        """An INSERT with its data in the request body.

        chDB's streaming inserter (`send_insert`) reports success when the server refuses the
        data (a violated constraint, say) and writes nothing, so the body goes to a temporary
        file and is inserted with INSERT ... SELECT FROM file(), which fails like ClickHouse.
        """
        match = INSERT_WITH_FORMAT.match(sql)
        if match is None:
            raise QueryError(
                CODE_BAD_ARGUMENTS,
                "an INSERT with data in the request body must end with FORMAT <name>",
            )
        statement, data_format = match.group(1), match.group(2)
        target = INSERT_TARGET.match(statement)
        if target is None:
            raise QueryError(
                CODE_BAD_ARGUMENTS, f"cannot read the table of {statement!r}"
            )
        columns = self._insert_columns(target.group("table"), target.group("columns"))
        structure = ", ".join(
            f"{quote_identifier(name)} {kind}" for name, kind in columns
        )
        column_list = ", ".join(quote_identifier(name) for name, _ in columns)
        spool = self.spool
        spool.seek(0)
        for chunk in insert_body:
            if chunk:
                spool.write(chunk)
        # What an earlier, longer body left beyond this one goes.
        spool.truncate()
        spool.flush()
        if spool.tell() == 0:
            summary = {
                "read_rows": "0",
                "read_bytes": "0",
                "written_rows": "0",
                "written_bytes": "0",
                "elapsed_ns": "0",
            }
            return b"", summary
        settings = target.group("settings") or ""
        insert = (
            f"INSERT INTO {target.group('table')} ({column_list}) {settings} "
            f"SELECT * FROM file({quote_string(self.spool_path)}, {quote_string(data_format)}, {quote_string(structure)})"
        )
        return self._query(insert, "TSV", {})

    def _insert_columns(self, table, listed):
        """(name, type) of the columns an INSERT writes: those listed, else every column that
        takes a value (not MATERIALIZED or ALIAS), in table order."""
        parts = [unquote_identifier(part) for part in split_qualified(table)]
        if len(parts) == 2:
            database_sql, table_name = quote_string(parts[0]), parts[1]
        else:
            database_sql, table_name = "currentDatabase()", parts[0]
        rows, _ = self._query(
            "SELECT name, type, default_kind FROM system.columns "
            f"WHERE database = {database_sql} AND table = {quote_string(table_name)} ORDER BY position",
            # Raw: types such as DateTime64(6, 'UTC') come back unescaped (names and types hold
            # no tabs or newlines).
            "TSVRaw",
            {},
        )
        known = []
        for line in rows.decode().splitlines():
            name, kind, default_kind = line.split("\t")
            known.append((name, kind, default_kind))
        if not known:
            raise QueryError(
                60,
                f"Code: 60. DB::Exception: Table {table} does not exist. (UNKNOWN_TABLE)",
            )
        if listed is None or not listed.strip():
            return [
                (name, kind)
                for name, kind, default_kind in known
                if default_kind not in ("MATERIALIZED", "ALIAS")
            ]
        types = {name: kind for name, kind, _ in known}
        columns = []
        for name in (unquote_identifier(part.strip()) for part in listed.split(",")):
            if name not in types:
                raise QueryError(
                    16,
                    f"Code: 16. DB::Exception: No such column {name} in table {table}. (NO_SUCH_COLUMN_IN_TABLE)",
                )
            columns.append((name, types[name]))
        return columns


def split_qualified(name):
    """`db`.`table` or db.table → its parts, quotes kept."""
    parts, current, quoted = [], "", False
    for character in name:
        if character == "`":
            quoted = not quoted
        if character == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += character
    parts.append(current)
    return parts


def unquote_identifier(name):
    name = name.strip()
    if len(name) >= 2 and name[0] == "`" and name[-1] == "`":
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def quote_string(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name):
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def read_exactly(stream, size):
    data = stream.read(size)
    if len(data) != size:
        raise QueryError(
            CODE_BAD_ARGUMENTS,
            f"request body ended early: wanted {size} bytes, got {len(data)}",
        )
    return data


def chunked_pieces(stream):
    """The pieces of a `Transfer-Encoding: chunked` body."""
    while True:
        size_line = stream.readline(1024)
        if not size_line:
            raise QueryError(
                CODE_BAD_ARGUMENTS, "chunked request body ended without its last chunk"
            )
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailer fields, then the empty line that ends the body.
            while stream.readline(65536) not in (b"\r\n", b"\n", b""):
                pass
            return
        yield read_exactly(stream, size)
        read_exactly(stream, 2)  # the CRLF after each chunk


def sized_pieces(stream, length):
    remaining = length
    while remaining > 0:
        piece = read_exactly(stream, min(remaining, READ_PIECE_BYTES))
        remaining -= len(piece)
        yield piece


def block_checksum(block):
    """CityHash128 (v1.0.2) of a block's header and payload, high half first, as ClickHouse writes it."""
    hash128 = CityHash128(block)
    return struct.pack("<QQ", hash128 >> 64, hash128 & 0xFFFFFFFFFFFFFFFF)


def decompressed_blocks(pieces):
    """Undoes ClickHouse's compressed-block framing over a stream of body pieces."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while True:
            if len(buffer) < COMPRESSED_CHECKSUM_BYTES + COMPRESSED_HEADER_BYTES:
                break
            header = COMPRESSED_CHECKSUM_BYTES
            method = buffer[header]
            compressed_size, raw_size = struct.unpack_from("<II", buffer, header + 1)
            block_end = header + compressed_size
            if compressed_size < COMPRESSED_HEADER_BYTES:
                raise QueryError(
                    CODE_CANNOT_DECOMPRESS,
                    f"compressed block size {compressed_size} is smaller than its header",
                )
            if len(buffer) < block_end:
                break
            block = bytes(buffer[header:block_end])
            if block_checksum(block) != bytes(buffer[:header]):
                raise QueryError(
                    CODE_CHECKSUM_DOESNT_MATCH, "checksum doesn't match: corrupted data"
                )
            payload = block[COMPRESSED_HEADER_BYTES:]
            del buffer[:block_end]
            if method == METHOD_LZ4:
                try:
                    yield lz4.block.decompress(payload, uncompressed_size=raw_size)
                except lz4.block.LZ4BlockError as error:
                    raise QueryError(
                        CODE_CANNOT_DECOMPRESS, f"cannot decompress LZ4 block: {error}"
                    ) from None
            elif method == METHOD_NONE:
                yield payload
            else:
                raise QueryError(
                    CODE_CANNOT_DECOMPRESS, f"unknown compression method 0x{method:02x}"
                )
    if buffer:
        raise QueryError(
            CODE_CANNOT_DECOMPRESS,
            f"request body ends inside a compressed block ({len(buffer)} bytes left)",
        )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chfront"
    engine = None  # set by serve()
    verbose = False

    def log_message(self, format, *args):
        if self.verbose:
            super().log_message(format, *args)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/ping":
            self._reply(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        self._handle_query()

    def do_POST(self):
        self._handle_query()

    def _body_pieces(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return chunked_pieces(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return sized_pieces(self.rfile, length)

    def _handle_query(self):
        query_id = str(uuid.uuid4())
        body_consumed = False
        try:
            url = urllib.parse.urlsplit(self.path)
            if url.path not in ("/", ""):
                raise QueryError(
                    CODE_BAD_ARGUMENTS,
                    f"there is no handler for {url.path}: chfront serves / and /ping",
                )
            arguments = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            pieces = self._body_pieces() if self.command == "POST" else iter(())
            content_type = self.headers.get("Content-Type", "")
            if content_type.startswith("multipart/form-data"):
                # The crate sends `query` and `param_*` as form fields when a query has parameters.
                arguments.update(parse_multipart(content_type, b"".join(pieces)))
                pieces = iter(())
            query = arguments.get("query", "")
            decompress = arguments.get("decompress") == "1"
            if (
                query
                and INSERT_PREFIX.match(query)
                and self.command == "POST"
                and INSERT_WITH_FORMAT.match(query)
            ):
                # The INSERT streams the body: it is read to its end only if the INSERT succeeds.
                insert_body = decompressed_blocks(pieces) if decompress else pieces
                sql = query
            else:
                body = b"".join(decompressed_blocks(pieces) if decompress else pieces)
                body_consumed = True
                sql = query + (
                    ("\n" if query else "") + body.decode("utf-8") if body else ""
                )
                insert_body = None
            if not sql.strip():
                raise QueryError(CODE_BAD_ARGUMENTS, "empty query")
            params = {
                name[len("param_") :]: value
                for name, value in arguments.items()
                if name.startswith("param_")
            }
            settings = {}
            for name, value in arguments.items():
                if name in NOT_SETTINGS or name.startswith("param_"):
                    continue
                if not SETTING_NAME.match(name):
                    raise QueryError(
                        CODE_BAD_ARGUMENTS, f"invalid setting name {name!r}"
                    )
                settings[name] = value
            output_format = arguments.get("default_format") or "TabSeparated"
            started = time.monotonic()
            data, summary = self.engine.run(
                sql,
                output_format,
                params,
                settings,
                arguments.get("database"),
                insert_body,
            )
            body_consumed = True
            headers = {
                "Content-Type": "application/octet-stream",
                "X-ClickHouse-Query-Id": query_id,
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
                "X-ClickHouse-Server-Display-Name": "chfront",
            }
            self._reply(200, data, headers)
            if self.verbose:
                print(
                    f"chfront: {time.monotonic() - started:.3f}s {sql[:120]!r}",
                    file=sys.stderr,
                )
        except QueryError as error:
            self._reply_error(error.code, str(error), query_id, close=not body_consumed)
        except Exception as error:  # never let one request take the front end down
            self._reply_error(
                CODE_UNKNOWN_EXCEPTION,
                f"chfront: {type(error).__name__}: {error}",
                query_id,
                close=True,
            )

    def _reply_error(self, code, message, query_id, close):
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}. (version {self.engine.version})"
        headers = {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(code),
            "X-ClickHouse-Query-Id": query_id,
        }
        if close:
            # The rest of the request body was not read: the connection cannot carry another request.
            headers["Connection"] = "close"
            self.close_connection = True
        self._reply(500, (message.rstrip("\n") + "\n").encode("utf-8"), headers)

    def _reply(self, status, body, headers):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def parse_multipart(content_type, body):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True).decode("utf-8")
    return fields


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(listen, data_dir, verbose=False, ready=None, connections=DEFAULT_CONNECTIONS):
    host, port = listen.rsplit(":", 1)
    engine = Engine(data_dir, connections)
    handler = type("BoundHandler", (Handler,), {"engine": engine, "verbose": verbose})
    server = Server((host, int(port)), handler)
    if ready is not None:
        ready(server)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:18123", help="HOST:PORT to listen on"
    )
    parser.add_argument(
        "--data", required=True, help="chDB data directory (kept across restarts)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=DEFAULT_CONNECTIONS,
        help="queries run at once, each on a chDB connection of its own (others wait)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    options = parser.parse_args()

    def on_ready(server):
        def stop(signum, frame):
            # shutdown() waits for serve_forever to return: call it off the main thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        print(
            f"chfront: ClickHouse {server.RequestHandlerClass.engine.version} (chDB) on http://{options.listen}",
            flush=True,
        )

    serve(options.listen, options.data, options.verbose, on_ready, options.connections)


if __name__ == "__main__":
    main()
