"""Tests of the chfront ClickHouse HTTP front end, against a real chDB engine in a temp folder.

Run with the chDB venv's python: python -m unittest discover -s deploy/local/chfront
"""

import http.client
import os
import struct
import tempfile
import threading
import time
import unittest
import urllib.parse

import lz4.block

import chfront


def rows_binary(rows):
    """RowBinary for (UInt64, String) rows."""
    out = bytearray()
    for number, text in rows:
        encoded = text.encode()
        out += struct.pack("<Q", number) + bytes([len(encoded)]) + encoded
    return bytes(out)


def compressed_block(raw, method=chfront.METHOD_LZ4):
    payload = (
        lz4.block.compress(raw, store_size=False)
        if method == chfront.METHOD_LZ4
        else raw
    )
    block = (
        struct.pack(
            "<BII", method, len(payload) + chfront.COMPRESSED_HEADER_BYTES, len(raw)
        )
        + payload
    )
    return chfront.block_checksum(block) + block


class FrontEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.data_dir = tempfile.TemporaryDirectory()
        started = threading.Event()
        holder = {}

        def on_ready(server):
            holder["server"] = server
            started.set()

        cls.thread = threading.Thread(
            target=chfront.serve,
            args=("127.0.0.1:0", cls.data_dir.name, False, on_ready),
            daemon=True,
        )
        cls.thread.start()
        if not started.wait(timeout=60):
            raise RuntimeError("chfront did not start within 60 s")
        cls.server = holder["server"]
        cls.port = cls.server.server_address[1]

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.thread.join(timeout=30)
        cls.data_dir.cleanup()

    def request(
        self, method, params=None, body=None, headers=None, path="/", chunked=False
    ):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        connection.request(
            method, url, body=body, headers=headers or {}, encode_chunked=chunked
        )
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response, payload

    def query(self, sql, **params):
        response, payload = self.request("POST", params or None, sql.encode())
        self.assertEqual(response.status, 200, payload)
        return payload.decode()

    def fresh_table(self, name):
        self.query(f"DROP TABLE IF EXISTS {name}")
        self.query(
            f"CREATE TABLE {name} (n UInt64, s String) ENGINE = MergeTree ORDER BY n"
        )

    def test_ping(self):
        response, payload = self.request("GET", path="/ping")
        self.assertEqual((response.status, payload), (200, b"Ok.\n"))

    def test_version_is_clickhouse_26(self):
        self.assertTrue(self.query("SELECT version()").startswith("26."))

    def test_query_in_url_and_default_format(self):
        response, payload = self.request(
            "GET", {"query": "SELECT 1 AS one", "default_format": "JSONEachRow"}
        )
        self.assertEqual((response.status, payload), (200, b'{"one":1}\n'))

    def test_plain_insert_body(self):
        self.fresh_table("plain")
        rows = [(1, "a"), (2, "bb")]
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO plain (n, s) FORMAT RowBinary"},
            rows_binary(rows),
        )
        self.assertEqual(response.status, 200, payload)
        self.assertIn('"written_rows":"2"', response.getheader("X-ClickHouse-Summary"))
        self.assertEqual(
            self.query("SELECT n, s FROM plain ORDER BY n"), "1\ta\n2\tbb\n"
        )

    def test_chunked_insert_body(self):
        self.fresh_table("chunked")
        data = rows_binary([(n, f"row{n}") for n in range(1000)])
        # Chunk boundaries deliberately fall inside rows.
        pieces = [data[i : i + 777] for i in range(0, len(data), 777)]
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO chunked FORMAT RowBinary"},
            iter(pieces),
            chunked=True,
        )
        self.assertEqual(response.status, 200, payload)
        self.assertEqual(
            self.query("SELECT count(), sum(n) FROM chunked"), "1000\t499500\n"
        )

    def test_a_short_insert_after_a_long_one_writes_only_its_own_rows(self):
        # Each connection's INSERT bodies share one spool file, written over in place.
        self.fresh_table("long_body")
        self.fresh_table("short_body")
        for table, rows in [
            ("long_body", [(n, "x" * 100) for n in range(2000)]),
            ("short_body", [(7, "y")]),
        ]:
            response, payload = self.request(
                "POST",
                {"query": f"INSERT INTO {table} FORMAT RowBinary"},
                rows_binary(rows),
            )
            self.assertEqual(response.status, 200, payload)
        self.assertEqual(self.query("SELECT count() FROM long_body"), "2000\n")
        self.assertEqual(self.query("SELECT n, s FROM short_body"), "7\ty\n")

    def test_lz4_compressed_insert_body_in_several_blocks(self):
        self.fresh_table("compressed")
        first = rows_binary([(n, "x" * 50) for n in range(500)])
        second = rows_binary([(n, "y") for n in range(500, 600)])
        body = compressed_block(first) + compressed_block(second, chfront.METHOD_NONE)
        # Chunked as well, with pieces that split the block headers.
        pieces = [body[i : i + 10] for i in range(0, len(body), 10)]
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO compressed FORMAT RowBinary", "decompress": "1"},
            iter(pieces),
            chunked=True,
        )
        self.assertEqual(response.status, 200, payload)
        self.assertEqual(
            self.query("SELECT count(), countIf(s = 'y') FROM compressed"), "600\t100\n"
        )

    def test_bad_sql_is_answered_like_clickhouse_and_the_front_end_survives(self):
        response, payload = self.request("POST", body=b"SELEC 1")
        self.assertEqual(response.status, 500)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "62")
        self.assertTrue(
            payload.startswith(b"Code: 62. DB::Exception: Syntax error"), payload
        )
        self.assertEqual(self.query("SELECT 2"), "2\n")

    def test_unknown_table_insert_fails_without_reading_the_body_and_closes(self):
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO nowhere FORMAT RowBinary"},
            rows_binary([(1, "a")]),
        )
        self.assertEqual(response.status, 500)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "60")
        self.assertEqual(response.getheader("Connection"), "close")
        self.assertEqual(self.query("SELECT 3"), "3\n")

    def test_malformed_rows_are_rejected_and_nothing_is_written(self):
        self.fresh_table("malformed")
        response, payload = self.request(
            "POST", {"query": "INSERT INTO malformed FORMAT RowBinary"}, b"\x01\x02"
        )
        self.assertEqual(response.status, 500)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "33")
        self.assertEqual(self.query("SELECT count() FROM malformed"), "0\n")

    def test_a_violated_constraint_fails_the_insert_like_clickhouse(self):
        # chDB's own streaming inserter reports success here and writes nothing.
        self.query("DROP TABLE IF EXISTS constrained")
        self.query(
            "CREATE TABLE constrained (n UInt64, s String, CONSTRAINT positive CHECK n > 0) "
            "ENGINE = MergeTree ORDER BY n"
        )
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO constrained FORMAT RowBinary"},
            rows_binary([(1, "a"), (0, "b")]),
        )
        self.assertEqual(response.status, 500, payload)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "469")
        self.assertEqual(self.query("SELECT count() FROM constrained"), "0\n")

    def test_listed_columns_defaults_and_materialized_columns(self):
        self.query("DROP TABLE IF EXISTS defaults")
        self.query(
            "CREATE TABLE defaults (n UInt64, s String DEFAULT 'dflt', twice UInt64 MATERIALIZED n * 2, "
            "at DateTime64(6, 'UTC') DEFAULT 0) "
            "ENGINE = MergeTree ORDER BY n"
        )
        body = b"".join(struct.pack("<Q", n) for n in (3, 4))
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO `default`.`defaults` (`n`) FORMAT RowBinary"},
            body,
        )
        self.assertEqual(response.status, 200, payload)
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO defaults (n, s) FORMAT RowBinary"},
            rows_binary([(5, "given")]),
        )
        self.assertEqual(response.status, 200, payload)
        self.assertEqual(
            self.query("SELECT n, s, twice FROM defaults ORDER BY n"),
            "3\tdflt\t6\n4\tdflt\t8\n5\tgiven\t10\n",
        )

    def test_corrupt_compressed_body_fails_its_checksum(self):
        self.fresh_table("corrupt")
        block = bytearray(compressed_block(rows_binary([(1, "a" * 100)])))
        # Corrupt the last literal bytes: LZ4 alone would decompress this into wrong rows.
        block[-5:] = b"\xff" * 5
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO corrupt FORMAT RowBinary", "decompress": "1"},
            bytes(block),
        )
        self.assertEqual(response.status, 500, payload)
        self.assertEqual(response.getheader("X-ClickHouse-Exception-Code"), "40")
        self.assertEqual(self.query("SELECT count() FROM corrupt"), "0\n")

    def test_settings_apply_to_one_query_only(self):
        self.assertEqual(
            self.query("SELECT getSetting('max_threads') = 3", max_threads="3"), "1\n"
        )
        self.assertEqual(self.query("SELECT getSetting('max_threads') = 3"), "0\n")

    def test_server_side_parameters_in_url_and_multipart_form(self):
        self.assertEqual(self.query("SELECT {x:UInt32} + 1", param_x="41"), "42\n")
        boundary = "chfront-test-boundary"
        form = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"query\"\r\n\r\nSELECT concat({{s:String}}, '!')\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="param_s"\r\n\r\nhi\r\n--{boundary}--\r\n'
        ).encode()
        response, payload = self.request(
            "POST",
            body=form,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        self.assertEqual((response.status, payload), (200, b"hi!\n"))

    def test_a_long_query_does_not_hold_up_an_insert(self):
        # Like a ClickHouse server: the sink's inserts go on while its analytics refresh (a
        # long SELECT) runs.
        self.fresh_table("beside_long_query")
        long_query = threading.Thread(
            target=self.query, args=("SELECT sleep(3) AS chfront_long_query",)
        )
        long_query.start()
        deadline = time.monotonic() + 30
        running = "SELECT count() FROM system.processes WHERE query LIKE '%AS chfront_long_query%' AND query NOT LIKE '%system.processes%'"
        while self.query(running) != "1\n":
            self.assertLess(time.monotonic(), deadline, "the long query never started")
            time.sleep(0.01)
        response, payload = self.request(
            "POST",
            {"query": "INSERT INTO beside_long_query FORMAT RowBinary"},
            rows_binary([(1, "a")]),
        )
        self.assertEqual(response.status, 200, payload)
        self.assertEqual(self.query("SELECT count() FROM beside_long_query"), "1\n")
        self.assertEqual(
            self.query(running), "1\n", "the insert waited for the long query"
        )
        long_query.join(timeout=30)

    def test_database_parameter(self):
        self.query("CREATE DATABASE IF NOT EXISTS other")
        self.query("CREATE TABLE IF NOT EXISTS other.t (n UInt8) ENGINE = Memory")
        self.assertEqual(
            self.query("SELECT currentDatabase()", database="other"), "other\n"
        )
        self.assertEqual(self.query("SELECT currentDatabase()"), "default\n")


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    unittest.main()
