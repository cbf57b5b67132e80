"""Publishing to the central catalogue (a real MariaDB) when it was down at packing time."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import MP3, Node, make_tone, segue
from mariadb import MariaDB
from samba import free_port


def shard_table(port: int) -> str:
    return (f'\n[plugins.mysql]\n[[plugins.mysql.shards]]\nname = "s0"\nrange = "-"\n'
            f'host = "127.0.0.1"\nport = {port}\nuser = "root"\n')


def test_a_track_packed_while_the_database_was_down_is_published_later(
        fresh_node: Node, tmp_path: Path) -> None:
    server = MariaDB(tmp_path / "db", server_id=1)
    server.start()
    try:
        base = fresh_node.conf.read_text()
        fresh_node.conf.write_text(base + shard_table(server.port))
        segue("catalogue", "init", "--config", fresh_node.conf)
        down = base + shard_table(free_port())  # nothing listens there: the database is down
        fresh_node.conf.write_text(down)
        first, second = (make_tone(tmp_path / f"{n}.mp3", MP3, seconds=2, freq=f, title=n)
                         for n, f in (("One", 440), ("Two", 550)))

        def pack(*files: Path) -> tuple[int, list[dict]]:
            result = segue("pack", "--config", fresh_node.conf, "--json", *files, check=False)
            return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]

        code, (doc,) = pack(first)
        assert code == 1 and doc["published"] is False
        code, (doc,) = pack(first)  # packed already, but not published: still a failure
        assert code == 1 and doc["already_packed"] and doc["published"] is False
        assert pack(second)[0] == 1

        fresh_node.conf.write_text(base + shard_table(server.port))  # the database is back
        code, (doc,) = pack(first)
        assert code == 0 and doc["already_packed"] and doc["published"] is True
        one = doc["track_id"]
        code, (doc,) = pack(first)  # published: nothing more to do
        assert code == 0 and doc["published"] is True
        out = segue("catalogue", "publish", "--config", fresh_node.conf).stdout
        assert out.endswith("published 1 of 1 tracks\n") and "manifest version 1" in out
        two = out.split("\t")[0]
        rows = server.execute("SELECT track_id, title FROM tracks ORDER BY title")
        assert rows == [(one, "One"), (two, "Two")]
        out = segue("catalogue", "publish", "--config", fresh_node.conf).stdout
        assert out == "published 0 of 0 tracks\n"
        out = segue("catalogue", "publish", "--config", fresh_node.conf, "--all").stdout
        assert out.endswith("published 2 of 2 tracks\n")

        fresh_node.conf.write_text(down)  # removing needs the central catalogue first
        refused = segue("tracks", "remove", "--config", fresh_node.conf, two, check=False)
        assert refused.returncode == 1 and "nothing was removed" in refused.stderr
        assert "catalogued: True" in segue("tracks", "show", "--config", fresh_node.conf, two)\
            .stdout
        fresh_node.conf.write_text(base + shard_table(server.port))
        segue("tracks", "remove", "--config", fresh_node.conf, two)
        assert server.execute("SELECT track_id FROM tracks") == [(one,)]

        fresh_node.conf.write_text(base)  # no publishing plugin: the command says so
        alone = segue("catalogue", "publish", "--config", fresh_node.conf, one, check=False)
        assert alone.returncode == 2 and "[plugins.mysql]" in alone.stderr
    finally:
        server.kill()
