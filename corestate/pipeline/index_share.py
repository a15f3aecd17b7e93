"""A packer's share of the exact index, kept outside the repository so that a restarted
or reassigned packer gets it back without reading every index file.

Terms:

- *share*: blob id → id of the pack holding it, for the blobs routed to the chunks
  partitions one packer owns (chunks are sharded by blob id, so shares do not overlap).
  Its ``entries`` are any mutable mapping; distributed mode passes a faust table whose
  changelog topic restores it (:mod:`corestate.connectors.kafka_runner`), tests a dict;
- *live pack*: a pack file present in the repository. An entry counts only while its
  pack is live: packs disappear only through ``prune`` (which repacks the blobs it keeps
  into new packs), and prune cannot run while workers hold their repository lock, so
  listing the packs whenever partitions move is enough. An entry whose pack is gone makes
  the blob be stored again: a duplicate, never a missing blob;
- an entry is :meth:`recorded <IndexShare.record>` only once its pack and index are
  durable, so the share never names a blob that a crash could lose.

>>> share = IndexShare({}, live_packs={b"p1"})
>>> share.record(0, b"blob", b"p1"); share.record(0, b"other", b"gone")
>>> (b"blob" in share, b"other" in share, b"new" in share)
(True, True, False)
>>> share.live_packs = {b"p1"}  # relisted after partitions moved: the "gone" pack is gone
>>> (b"blob" in share, b"other" in share)
(True, False)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping


class IndexShare:
    """``blob_id in share``: stored in a live pack. ``on_record(partition, blob, pack)``
    is told of every new entry (distributed mode sends it to the changelog)."""

    def __init__(self, entries: MutableMapping[bytes, bytes], live_packs: set[bytes],
                 on_record: Callable[[int, bytes, bytes], None] | None = None) -> None:
        self.entries = entries
        self.live_packs = live_packs
        self._on_record = on_record

    def __contains__(self, blob_id: object) -> bool:
        pack = self.entries.get(blob_id)  # type: ignore[call-overload]
        return pack is not None and pack in self.live_packs

    def blob_ids(self) -> Iterator[bytes]:
        return (b for b, p in list(self.entries.items()) if p in self.live_packs)

    def record(self, partition: int, blob_id: bytes, pack_id: bytes) -> None:
        self.entries[blob_id] = pack_id
        self.live_packs.add(pack_id)
        if self._on_record is not None:
            self._on_record(partition, blob_id, pack_id)
