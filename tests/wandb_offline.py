"""Read an offline W&B run back from its ``.wandb`` file (wandb 0.31 ships no reader for it)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The protobuf records of an offline run's ``run-<id>.wandb`` file.

    The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of chunks, each ``crc32 (4) | length (2) | type (1) | payload``; type 1 is a whole
    record, 2/3/4 the first/middle/last piece of one. A record is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B datastore"
    pos, block, pieces = 7, 32 * 1024, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record


def offline_run(job: Path) -> dict[str, Any]:
    """What the job's offline W&B run recorded: run metadata, config, metrics, summary, exit code."""
    run_files = list(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(run_files) == 1, f"{job}: expected one offline W&B run, found {run_files}"
    out: dict[str, Any] = {"config": {}, "summary": {}, "step_metrics": {}, "exit_code": None,
                           "history_keys": set()}
    for record in wandb_records(run_files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out.update(id=run.run_id, group=run.run_group, name=run.display_name,
                       job_type=run.job_type, tags=list(run.tags))
            out["config"].update({u.key: json.loads(u.value_json) for u in run.config.update})
        elif kind == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "metric":
            out["step_metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "summary":
            for u in record.summary.update:
                out["summary"]["/".join([u.key] if u.key else list(u.nested_key))] = json.loads(u.value_json)
        elif kind == "history":
            out["history_keys"].update(item.key or "/".join(item.nested_key) for item in record.history.item)
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    return out
