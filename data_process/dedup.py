"""Exact and near-duplicate detection: MinHash signatures (datasketch) in the workers, an on-disk index in the main process.

Workers give each row that passed the filters a 64-bit digest of its output line and, for near-dedup, a MinHash
signature of its character shingles with one 64-bit key per LSH band. The main process walks the rows in input
order and asks `DuplicateIndex` whether an earlier survivor matches, so the first copy survives whatever the
number of processes.

The index is a sqlite file rather than datasketch's in-memory `MinHashLSH` (whose other backends are Redis and
Cassandra servers): memory stays within sqlite's page cache (capped at 64 MiB) however large the input, and the
disk holds about 1.2 KB per surviving row with the defaults (32 bucket keys and a 512-byte signature; measured),
about 50 bytes for exact dedup alone. Digests are 8 bytes: among 10^8 rows the chance that any two different rows
share one is about 3 in 10,000.

Candidates come from LSH bands that datasketch chooses for the threshold with false negatives weighted 9:1 over
false positives (high recall); each candidate is then checked, and counts only when the share of equal signature
values (MinHash's Jaccard estimate) is at least the threshold (precision).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from data_process.filters import code_points
from data_process.settings import DedupArgs

SHINGLE_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, 64-bit: multiplication by it mixes and never loses bits
SQLITE_MAX_PARAMS = 10_000  # well under sqlite's 32,766 bound variables per statement
LSH_WEIGHTS = (0.1, 0.9)  # (false positive, false negative): candidates are verified, so favour recall


@dataclass(slots=True)
class Kept:
    """A row that passed the filters: its output line and what the dedup index needs."""

    ordinal: int
    where: str
    length: int
    line: str
    digest: int
    buckets: list[int] | None = None
    signature: bytes | None = None


def digest64(data: bytes) -> int:
    """A signed 64-bit hash (sqlite integers are signed)."""
    return int.from_bytes(xxhash.xxh3_64_digest(data), "little", signed=True)


def shingle_hashes(text: str, size: int) -> np.ndarray:
    """Distinct 32-bit hashes of the `size`-character shingles of the case-folded, space-collapsed text.

    A polynomial hash over code points, computed for all shingles at once; datasketch mixes each value
    again (MurmurHash3's finaliser) before permuting, so this only needs to keep distinct shingles apart.
    """
    points = code_points(" ".join(text.casefold().split())).astype(np.uint64)
    size = max(1, min(size, len(points)))  # a text shorter than a shingle is one shingle
    hashes = np.zeros(max(len(points) - size + 1, 1), dtype=np.uint64)
    for offset in range(min(size, len(points))):
        hashes = hashes * SHINGLE_BASE + points[offset : offset + len(hashes)]
    return np.unique((hashes >> np.uint64(32)) ^ (hashes & np.uint64(0xFFFFFFFF)))


class MinHasher:
    """Signatures and LSH band keys for texts, the same in every process."""

    def __init__(self, args: DedupArgs):
        self.args = args
        self.bands = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm, weights=LSH_WEIGHTS).hashranges

    def sign(self, texts: Sequence[str]) -> list[tuple[list[int], bytes]]:
        """(band keys, signature bytes) of each text."""
        sets = [shingle_hashes(text, self.args.shingle_chars) for text in texts]
        # the items are hashes already: `int` passes them to MinHash's permutations unchanged
        minhashes = MinHash.bulk(sets, num_perm=self.args.num_perm, hashfunc=int, scheme="affine32")
        signed = []
        for minhash in minhashes:
            values = minhash.hashvalues
            keys = [digest64(i.to_bytes(2, "little") + values[start:end].tobytes()) for i, (start, end) in enumerate(self.bands)]
            signed.append((keys, values.tobytes()))
        return signed


def similarity(a: bytes, b: bytes) -> float:
    """MinHash's Jaccard estimate: the share of equal signature values (as datasketch's MinHash.jaccard)."""
    return float(np.mean(np.frombuffer(a, dtype=np.uint32) == np.frombuffer(b, dtype=np.uint32)))


class DuplicateIndex:
    """The survivors so far, on disk: exact digests, LSH buckets and signatures; `classify` checks a chunk in order."""

    def __init__(self, path: Path, args: DedupArgs):
        self.args = args
        self.db = sqlite3.connect(path)
        self.db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -65536;
            CREATE TABLE exact (digest INTEGER PRIMARY KEY, survivor INTEGER NOT NULL) WITHOUT ROWID;
            CREATE TABLE bucket (key INTEGER NOT NULL, survivor INTEGER NOT NULL, PRIMARY KEY (key, survivor)) WITHOUT ROWID;
            CREATE TABLE survivor (id INTEGER PRIMARY KEY, location TEXT NOT NULL, signature BLOB);
            """
        )  # scratch state, deleted after the run: no journal, no fsync; the page cache is capped at 64 MiB

    def close(self) -> None:
        self.db.close()

    def classify(self, docs: Sequence[Kept]) -> list[tuple[str, str] | None]:
        """For each doc in order: None if it survives, else (exact_dup | near_dup, location of the surviving copy)."""
        exact, near = self.args.exact, self.args.near
        seen = {}
        if exact:
            seen = dict(self._select_in("SELECT digest, survivor FROM exact WHERE digest IN ({})", [d.digest for d in docs]))
        members: dict[int, list[int]] = defaultdict(list)
        signatures: dict[int, bytes] = {}
        if near:
            keys = {key for doc in docs for key in doc.buckets}
            for key, survivor in self._select_in("SELECT key, survivor FROM bucket WHERE key IN ({})", keys):
                members[key].append(survivor)
            candidates = {survivor for survivors in members.values() for survivor in survivors}
            signatures = dict(self._select_in("SELECT id, signature FROM survivor WHERE id IN ({})", candidates))
        matches: list[tuple[str, int] | None] = []
        for doc in docs:
            if exact and doc.digest in seen:
                matches.append(("exact_dup", seen[doc.digest]))
                continue
            survivor = self._near_match(doc, members, signatures) if near else None
            if survivor is not None:
                matches.append(("near_dup", survivor))
                continue
            matches.append(None)  # a survivor: later docs of this chunk are compared with it too
            seen[doc.digest] = doc.ordinal
            if near:
                for key in doc.buckets:
                    members[key].append(doc.ordinal)
                signatures[doc.ordinal] = doc.signature
        self._insert([doc for doc, match in zip(docs, matches) if match is None])
        locations = dict(self._select_in("SELECT id, location FROM survivor WHERE id IN ({})", {m[1] for m in matches if m}))
        return [(m[0], locations[m[1]]) if m else None for m in matches]

    def _near_match(self, doc: Kept, members: dict[int, list[int]], signatures: dict[int, bytes]) -> int | None:
        """The earliest survivor sharing an LSH bucket with `doc` whose estimated similarity reaches the threshold."""
        for survivor in sorted({s for key in doc.buckets for s in members.get(key, ())}):
            if similarity(doc.signature, signatures[survivor]) >= self.args.threshold:
                return survivor
        return None

    def _insert(self, survivors: list[Kept]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO survivor VALUES (?, ?, ?)",
                ((d.ordinal, d.where, d.signature if self.args.near else None) for d in survivors),
            )
            if self.args.exact:
                self.db.executemany("INSERT INTO exact VALUES (?, ?)", ((d.digest, d.ordinal) for d in survivors))
            if self.args.near:
                self.db.executemany("INSERT INTO bucket VALUES (?, ?)", ((k, d.ordinal) for d in survivors for k in d.buckets))

    def _select_in(self, query: str, values: Iterable) -> list[tuple]:
        values = list(values)
        rows = []
        for start in range(0, len(values), SQLITE_MAX_PARAMS):
            batch = values[start : start + SQLITE_MAX_PARAMS]
            rows += self.db.execute(query.format(",".join("?" * len(batch))), batch).fetchall()
        return rows
