"""Row counts of an SQLite database taken from its pages as they stream by: no second read.

A backup streams the database file once (sqlite_stream.py). Its table b-trees go by in that
stream, and each b-tree page says in its header what kind it is and how many cells it holds
(SQLite file format, https://www.sqlite.org/fileformat2.html, 1.6 "B-tree Pages"). Following
the interior pages' child pointers from each table's root page (from `sqlite_master`) and
summing the cells gives the table's row count: leaf cells for a rowid table, every cell for a
WITHOUT ROWID table (an index b-tree, whose interior cells hold rows too). Pages that are not
reached from a root (free pages, overflow pages, indexes) never count, whatever they contain.

The restore drill counts the restored copy's rows with SQL: two independent methods, which
must agree.
"""

from __future__ import annotations

import struct
from array import array

from .errors import BackupError

TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF = 5, 13, 2, 10
_INTERIOR = (TABLE_INTERIOR, INDEX_INTERIOR)
_FILE_HEADER = 100  # page 1 starts with the database file header


class PageCounter:
    """Feed the database file's bytes in order (any block sizes); then `counts(roots)`."""

    def __init__(self, page_size: int, page_count: int) -> None:
        if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
            raise BackupError(f"SQLite page size {page_size} is not a power of two in 512..65536")
        self.page_size = page_size
        self.page_count = page_count
        self._kind = bytearray(page_count + 1)  # page number -> b-tree page type (0: not a b-tree page)
        self._cells = array("H", bytes(2 * (page_count + 1)))  # cells on that page
        self._children: dict[int, list[int]] = {}  # interior page -> child page numbers
        self._pending = bytearray()
        self._next_page = 1

    def feed(self, data: bytes | memoryview) -> None:
        if self._pending:
            self._pending += data
            data, self._pending = bytes(self._pending), bytearray()
        size = self.page_size
        view = memoryview(data)
        whole = len(view) - len(view) % size
        for start in range(0, whole, size):
            self._page(view[start:start + size])
        if whole < len(view):
            self._pending = bytearray(view[whole:])

    def _page(self, page: memoryview) -> None:
        number = self._next_page
        self._next_page += 1
        if number > self.page_count:
            return
        offset = _FILE_HEADER if number == 1 else 0
        kind = page[offset]
        if kind not in (TABLE_INTERIOR, TABLE_LEAF, INDEX_INTERIOR, INDEX_LEAF):
            return
        (cells,) = struct.unpack_from(">H", page, offset + 3)
        self._kind[number] = kind
        self._cells[number] = cells
        if kind in _INTERIOR:
            pointers = offset + 12
            if pointers + 2 * cells > len(page):
                return  # not a real b-tree page (overflow or free page content); never reached from a root
            children = []
            for index in range(cells):
                (cell,) = struct.unpack_from(">H", page, pointers + 2 * index)
                if cell + 4 <= len(page):
                    children.append(struct.unpack_from(">I", page, cell)[0])
            children.append(struct.unpack_from(">I", page, offset + 8)[0])
            self._children[number] = children

    def counts(self, roots: dict[str, int], indexes: dict[str, int] | None = None) -> dict[str, int]:
        """Rows per table, from each table's root page number. The `indexes`' trees are walked
        too (not counted). `BackupError` when the pages do not form the b-trees (the file is
        damaged): a light structural check within the one read; the restore drill runs
        `PRAGMA integrity_check` on the restored copy."""
        if self._next_page <= self.page_count or self._pending:
            raise BackupError(f"the SQLite stream ended after page {self._next_page - 1} of {self.page_count}")
        for name, root in (indexes or {}).items():
            self._count(f"index {name}", root)
        return {name: self._count(f"table {name}", root) for name, root in roots.items()}

    def _count(self, name: str, root: int) -> int:
        if not 1 <= root <= self.page_count or self._kind[root] == 0:
            raise BackupError(f"{name}: root page {root} is not a b-tree page")
        rowid = self._kind[root] in (TABLE_INTERIOR, TABLE_LEAF)
        total, stack, seen = 0, [root], set()
        while stack:
            number = stack.pop()
            if number in seen or not 1 <= number <= self.page_count:
                raise BackupError(f"{name}: page {number} is reached twice or lies outside the file")
            seen.add(number)
            kind = self._kind[number]
            if (kind in (TABLE_INTERIOR, TABLE_LEAF)) != rowid:
                raise BackupError(f"{name}: page {number} is not a page of its b-tree")
            if kind in _INTERIOR:
                stack.extend(self._children.get(number, ()))
                if not rowid:
                    total += self._cells[number]
            else:
                total += self._cells[number]
        return total


__all__ = ["PageCounter"]
