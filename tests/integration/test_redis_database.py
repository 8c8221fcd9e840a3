"""A Redis URL naming a database the server does not have is a configuration error about the
whole sink: one line naming the database and the server's count, never a run parked for it."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from models.errors import ConfigError
from tasks import redis_sink
from tasks.errors import SinkUnavailable
from tests.fakes import Event
from tests.servers import redis_server


def test_asking_a_server_without_the_database_whether_it_is_a_cluster_names_the_database(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path, "--databases", "4") as server:
        client = redis_sink.connect(f"redis://127.0.0.1:{server.port}/9")

        with pytest.raises(ConfigError) as raised:
            client.ping()

    assert (
        str(raised.value)
        == "database 9 does not exist on this server (it has 4; see OUTBOX_REDIS_URL)"
    )


def test_publishing_to_a_database_the_server_does_not_have_is_an_outage_not_a_refusal(
    tmp_path: Path,
) -> None:
    with redis_server(tmp_path, "--databases", "4") as server:
        client = redis_sink.connect(f"redis://127.0.0.1:{server.port}/9", cluster=False)
        sink = redis_sink.RedisStreamSink(client, "outbox-test:db:")
        event = Event(run_id=uuid.uuid4(), id=1, seq=1, type="t", payload="{}")

        with pytest.raises(SinkUnavailable) as raised:
            sink.publish([event])

    assert "does not exist on this server" in str(raised.value)
