"""Leaving a table's rows out of a streamed SQLite file: the backup catalogue.

Each backup adds a row to the catalogue (the `backups` table of the project database) and each
check marks it, so a database streamed whole changes every hour: a chunk or two and a new file
list, ~110-420 KB an hour for a 50 MB database, although nothing else changed. PostgreSQL dumps
leave the catalogue's rows out (`pg_dump --exclude-table-data`); this does the same for a
SQLite file as it streams, page by page, without a second copy:

- each root page of the table and of its indexes is streamed as an empty leaf page of its kind
  (the table exists, with its schema and indexes, and holds no row);
- every other page of those b-trees (interior and leaf pages, and the overflow pages of their
  cells) goes on the free list: streamed as zeros, listed by new free-list trunk pages chained in
  front of the database's own free list; the header's free-list fields (offsets 32 and 36) say so.

Every other page is streamed as it is, so the stream is the same bytes hour after hour while the
rest of the database does not change; only when the catalogue takes a new page (every ten or so
backups, for its table) do the header, a trunk page and that page differ. The result is a valid
database (`PRAGMA integrity_check`: every page used once, the free list complete; the restore
drill runs it), and the catalogue is rebuilt from the repository after a restore.

Not done (the file is streamed whole, and `sources` says why) for databases with auto-vacuum
(their pointer-map pages would have to change too) or with reserved bytes at the end of each page
(an encryption or checksum extension owns them). SQLite file format:
https://www.sqlite.org/fileformat2.html (1.3 the header, 1.5 the free list, 1.6 b-tree pages,
1.7 overflow pages).
"""

from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass, field

from .errors import BackupError

TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF = 5, 13, 2, 10
_CHANGE_COUNTER, _DATABASE_SIZE, _FREELIST_TRUNK, _FREELIST_COUNT, _VERSION_VALID_FOR = 24, 28, 32, 36, 92  # header offsets


@dataclass
class LeaveOut:
    """The pages to stream differently: page number -> its bytes; and how many pages to stream."""

    pages: dict[int, bytes] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)  # the tables whose rows are left out
    note: str | None = None  # why nothing is left out, when it cannot be
    page_count: int | None = None  # pages to stream (None: all of the file's)

    def patch(self, block: bytes, first_page: int, page_size: int) -> bytes:
        """`block` (whole pages, starting at page `first_page`) with the replaced pages in it."""
        last = first_page + len(block) // page_size - 1
        hits = [n for n in self.pages if first_page <= n <= last]
        if not hits:
            return block
        patched = bytearray(block)
        for number in hits:
            start = (number - first_page) * page_size
            patched[start:start + page_size] = self.pages[number]
        return bytes(patched)


def plan(connection: sqlite3.Connection, fd: int, tables: tuple[str, ...], page_size: int, page_count: int) -> LeaveOut:
    """What to stream instead of the pages of `tables` (and their indexes), read through `fd`
    inside the caller's read transaction (`connection`)."""
    result = LeaveOut()
    header = os.pread(fd, 100, 0)
    if len(header) < 100:
        return result  # an empty file: nothing to leave out
    reserved = header[20]
    if int(connection.execute("PRAGMA auto_vacuum").fetchone()[0]) != 0:
        result.note = "auto_vacuum is on (its pointer-map pages would change too): streamed whole"
        return result
    if reserved:
        result.note = f"{reserved} bytes of each page are reserved (an extension's): streamed whole"
        return result
    usable = page_size - reserved
    roots: dict[int, int] = {}  # root page -> the kind of empty leaf it becomes
    for name in tables:
        rows = connection.execute(
            "SELECT type, rootpage FROM sqlite_master WHERE tbl_name = ? AND type IN ('table', 'index') AND rootpage > 0",
            (name,),
        ).fetchall()
        if not any(kind == "table" for kind, _ in rows):
            continue
        result.tables.append(name)
        for _kind, root in rows:
            roots[int(root)] = 0
    if not roots:
        return result

    def read(number: int, what: str = "a left-out table") -> bytes:
        if not 2 <= number <= page_count:
            raise BackupError(f"page {number} of {what} lies outside the file")
        page = os.pread(fd, page_size, (number - 1) * page_size)
        if len(page) != page_size:
            raise BackupError(f"page {number} of {what} is cut short")
        return page

    free: set[int] = set()
    for root in roots:
        kind = read(root)[0]
        if kind not in (TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF):
            raise BackupError(f"root page {root} of a left-out table is not a b-tree page")
        roots[root] = TABLE_LEAF if kind in (TABLE_INTERIOR, TABLE_LEAF) else INDEX_LEAF
        for number in _tree_pages(root, read, usable):
            if number != root:
                if number in free or number in roots:
                    raise BackupError(f"page {number} of a left-out table is reached twice")
                free.add(number)
    for root, kind in roots.items():
        result.pages[root] = _empty_leaf(kind, page_size, usable)
    # The database's own free pages join them, so that the stream depends only on which pages
    # are free, not on what they last held nor on which the catalogue has taken: a page the
    # catalogue takes from the free list, or a freed page's old content, changes nothing.
    old_trunk, old_count = struct.unpack_from(">II", header, _FREELIST_TRUNK)
    own = _free_list(old_trunk, read, usable, page_count)
    if len(own) != old_count:
        raise BackupError(f"the free list holds {len(own)} pages, the header says {old_count}")
    if own & (free | set(roots)):
        raise BackupError("a page of a left-out table is on the free list")
    free |= own
    # Free pages at the end of the file are not streamed at all (the header says the shorter
    # size): a catalogue that grows the file by a page changes nothing either.
    pages = page_count
    while pages in free:
        free.discard(pages)
        pages -= 1
    result.page_count = pages
    per_trunk = usable // 4 - 8  # what writers may use (readers accept -2: fileformat2 1.5)
    ordered = sorted(free)
    trunks: list[tuple[int, list[int]]] = []
    while ordered:
        trunk, ordered = ordered[0], ordered[1:]
        trunks.append((trunk, ordered[:per_trunk]))
        ordered = ordered[per_trunk:]
    for index, (trunk, leaves) in enumerate(trunks):
        following = trunks[index + 1][0] if index + 1 < len(trunks) else 0
        page = bytearray(page_size)
        struct.pack_into(f">II{len(leaves)}I", page, 0, following, len(leaves), *leaves)
        result.pages[trunk] = bytes(page)
        for leaf in leaves:
            result.pages[leaf] = bytes(page_size)
    first = bytearray(os.pread(fd, page_size, 0))
    struct.pack_into(">I", first, _DATABASE_SIZE, pages)
    struct.pack_into(">II", first, _FREELIST_TRUNK, trunks[0][0] if trunks else 0, len(free))
    # The file change counter moves with every write of page 1 (each page the catalogue takes);
    # a restored copy needs none in particular, only the version-valid-for number equal to it
    # (then the header's size is the size): both 1.
    struct.pack_into(">I", first, _CHANGE_COUNTER, 1)
    struct.pack_into(">I", first, _VERSION_VALID_FOR, 1)
    result.pages[1] = bytes(first)
    return result


def _free_list(trunk: int, read, usable: int, page_count: int) -> set[int]:
    """Every page on the database's free list (trunk pages and their leaves)."""
    found: set[int] = set()
    while trunk:
        if trunk in found:
            raise BackupError(f"the free list loops at page {trunk}")
        found.add(trunk)
        page = read(trunk, "the free list")
        following, count = struct.unpack_from(">II", page, 0)
        if count > usable // 4 - 2:
            raise BackupError(f"free-list trunk page {trunk} lists {count} pages, more than a page holds")
        leaves = struct.unpack_from(f">{count}I", page, 8)
        for leaf in leaves:
            if leaf in found or not 2 <= leaf <= page_count:
                raise BackupError(f"page {leaf} of the free list is listed twice or lies outside the file")
            found.add(leaf)
        trunk = following
    return found


def _empty_leaf(kind: int, page_size: int, usable: int) -> bytes:
    page = bytearray(page_size)
    # type, first freeblock 0, 0 cells, cell content area at the end (0 stands for 65536), 0 fragments
    struct.pack_into(">BHHHB", page, 0, kind, 0, 0, usable if usable < 65536 else 0, 0)
    return bytes(page)


def _tree_pages(root: int, read, usable: int) -> list[int]:
    """Every page of the b-tree at `root`: interior and leaf pages, and the overflow pages of their cells."""
    found, stack = [], [root]
    while stack:
        number = stack.pop()
        found.append(number)
        page = read(number)
        kind = page[0]
        if kind not in (TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF):
            raise BackupError(f"page {number} of a left-out table is not a b-tree page")
        interior = kind in (TABLE_INTERIOR, INDEX_INTERIOR)
        (cells,) = struct.unpack_from(">H", page, 3)
        pointers = 12 if interior else 8
        if interior:
            stack.append(struct.unpack_from(">I", page, 8)[0])
        for index in range(cells):
            (cell,) = struct.unpack_from(">H", page, pointers + 2 * index)
            if interior:
                stack.append(struct.unpack_from(">I", page, cell)[0])
            if kind == TABLE_INTERIOR:
                continue  # a child pointer and a rowid: no payload
            at = cell + (4 if interior else 0)
            size, at = _varint(page, at)
            if kind == TABLE_LEAF:
                _, at = _varint(page, at)  # the rowid
            local = _local(size, usable, kind == TABLE_LEAF)
            if local < size:
                (overflow,) = struct.unpack_from(">I", page, at + local)
                stack_overflow = overflow
                while stack_overflow:
                    found.append(stack_overflow)
                    stack_overflow = struct.unpack_from(">I", read(stack_overflow), 0)[0]
    return found


def _local(size: int, usable: int, table_leaf: bool) -> int:
    """How much of a cell's payload is on its page (the rest is on overflow pages)."""
    most = usable - 35 if table_leaf else ((usable - 12) * 64 // 255) - 23
    if size <= most:
        return size
    least = ((usable - 12) * 32 // 255) - 23
    local = least + (size - least) % (usable - 4)
    return local if local <= most else least


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for index in range(8):
        byte = data[at + index]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + index + 1
    return (value << 8) | data[at + 8], at + 9


__all__ = ["LeaveOut", "plan"]
