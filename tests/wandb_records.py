"""Reads the records of an offline W&B run file (`run-<id>.wandb`, what `wandb sync` uploads),
so tests can check the values a run logged, not only that a key appears in the bytes.

The file is W&B's framing of LevelDB's log format: a 7-byte header (`:W&B`, magic 0xBEE1 as
little-endian uint16, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last); a block's last
< 7 bytes are padding. Each record is a `wandb_internal_pb2.Record` protobuf."""

import json
import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    assert data[:4] == b":W&B", "not a W&B run file"
    assert struct.unpack("<HB", data[4:7]) == (0xBEE1, 0), "unknown W&B run file version"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def run_files(output_dir: Path) -> list[Path]:
    """The offline run files under `<output_dir>/wandb`, oldest first, complete: `wandb.finish()`
    can return while W&B's service process still holds the end of a run file in its buffer
    (a second run's file was seen at its 7 header bytes), so the service is shut down first
    (`wandb.teardown`, what W&B's atexit hook does when a job's process ends)."""
    import wandb

    wandb.teardown()
    files = sorted((Path(output_dir) / "wandb").glob("offline-run-*/run-*.wandb"))
    for path in files:
        records = read_records(path)
        assert records and records[-1].WhichOneof("record_type") == "exit", f"{path} incomplete"
    return files


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    records = []
    for raw in _chunks(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def run_id(path: Path) -> str:
    """The id in the file's run record."""
    (run,) = [r.run for r in read_records(path) if r.WhichOneof("record_type") == "run"]
    return run.run_id


def history(path: Path) -> list[dict]:
    """The logged rows, in order, as {key: value} (values decoded from their JSON)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return rows


def config(path: Path) -> dict:
    """The run's config as W&B keeps it ({key: value}, values decoded from their JSON): the run
    record's, then every later config update over it."""
    values: dict = {}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        items = record.run.config.update if kind == "run" else None
        if kind == "config":
            items = record.config.update
        for item in items or []:
            key = item.key or "/".join(item.nested_key)
            values[key] = json.loads(item.value_json)
    return values
