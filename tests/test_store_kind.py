"""A store holds dict records or queue items, never both (issue 17.11): CURRENT
records which, and opening the other kind refuses before anything is written.
(A queue's reclaim dropped the segments holding a dict's keys on a shared path.)
"""

from __future__ import annotations

import os
import pickle

import pytest
from forged import append, frame, rewrite_current, segment_paths

from iodict_log import DurableQueue, IODict, IODictLogError
from iodict_log.format import FLAG_PICKLE, OP_PUT, STORE_DICT, STORE_QUEUE, STORE_UNKNOWN
from iodict_log.log import Log
from iodict_log.manifest import read_manifest


class Frames:
    """A log consumer that keeps every frame it is given."""

    def __init__(self) -> None:
        self.frames: list = []

    def reset(self) -> None:
        self.frames = []

    def apply(self, frame, loc) -> None:
        self.frames.append(frame)

    def settle(self) -> None:
        pass


def open_log(path, kind):
    return Log(str(path), Frames(), sync=False, segment_bytes=4096, kind=kind)


def files_of(path) -> dict:
    return {name: open(os.path.join(path, name), "rb").read() for name in sorted(os.listdir(path))}


def test_a_new_store_records_its_kind_and_refuses_the_other_before_writing_anything(tmp_path):
    for kind, other, code in (("dict", "queue", STORE_DICT), ("queue", "dict", STORE_QUEUE)):
        path = tmp_path / kind
        open_log(path, kind).close()
        assert read_manifest(str(path)).kind == code
        open(os.path.join(path, "0000000099.seg"), "wb").close()  # a leftover: not even that is removed
        before = files_of(path)
        with pytest.raises(IODictLogError, match=f"cannot be opened as a {other}"):
            open_log(path, other)
        assert files_of(path) == before
        open_log(path, None).close()  # the tools accept either
        open_log(path, kind).close()


def test_a_dict_store_made_without_kind_refuses_a_queue_and_its_keys_survive(tmp_path):
    # The case: IODict (which does not pass kind yet) then DurableQueue on one path.
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096) as d:
        for i in range(100):
            d[f"k{i}"] = b"v" * 40
    with pytest.raises(IODictLogError, match="holds dict records"):
        open_log(path, "queue")
    with IODict(path) as d:
        assert len(d) == 100


def test_an_older_store_is_classified_by_its_contents_and_its_kind_recorded(tmp_path):
    dict_path, queue_path, empty_path = tmp_path / "d", tmp_path / "q", tmp_path / "e"
    with IODict(dict_path, segment_bytes=4096) as d:
        d.update({f"k{i}": i for i in range(10)})
    with DurableQueue(queue_path, segment_bytes=4096) as q:
        q.put("item")
    open_log(empty_path, None).close()
    for path in (dict_path, queue_path, empty_path):
        rewrite_current(str(path), kind=STORE_UNKNOWN)  # as written before the field existed
    with pytest.raises(IODictLogError, match="holds queue items; it cannot be opened as a dict"):
        open_log(queue_path, "dict")
    with pytest.raises(IODictLogError, match="holds dict records; it cannot be opened as a queue"):
        open_log(dict_path, "queue")
    assert read_manifest(str(dict_path)).kind == read_manifest(str(queue_path)).kind == STORE_UNKNOWN
    open_log(dict_path, "dict").close()
    open_log(queue_path, "queue").close()
    open_log(empty_path, "queue").close()
    assert [read_manifest(str(p)).kind for p in (dict_path, queue_path, empty_path)] == [1, 2, 2]


def test_a_store_holding_both_refuses_either_kind_and_the_tools_still_read_it(tmp_path):
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096) as d:
        d["key"] = 1
    rewrite_current(str(path), kind=STORE_UNKNOWN)
    last = segment_paths(str(path))[-1]  # a queue item appended as a version without this guard did
    append(last, frame(last, b"", pickle.dumps("item"), op=OP_PUT, seq=10**6, birthtime=2**62, flags=FLAG_PICKLE))
    for kind in ("dict", "queue"):
        with pytest.raises(IODictLogError, match="holds dict and queue records"):
            open_log(path, kind)
    log = open_log(path, None)
    assert len(log._consumer.frames) == 2
    log.close()


def test_a_store_kind_must_be_dict_queue_or_none(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        open_log(tmp_path / "s", "list")
    assert not os.path.exists(tmp_path / "s")


def test_a_roll_records_the_kind_the_frames_hold_when_opened_by_the_tools(tmp_path):
    path = tmp_path / "s"
    with IODict(path, segment_bytes=4096) as d:
        d["first"] = 1
    rewrite_current(str(path), kind=STORE_UNKNOWN)
    with IODict(path, segment_bytes=4096) as d:  # kind=None: recorded at the next roll
        for i in range(100):
            d[f"k{i}"] = b"v" * 40
    assert read_manifest(str(path)).kind == STORE_DICT
