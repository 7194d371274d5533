"""The diff page's two drawings of git's unified diff (web/diffview): classed lines, and
old and new side by side with removed lines paired with the added ones after them."""

from __future__ import annotations

from cairnd.web.diffview import split_rows, unified_lines

PATCH = """diff --git a/d.txt b/d.txt
index 1111111..2222222 100644
--- a/d.txt
+++ b/d.txt
@@ -1,4 +1,4 @@
-one
+ONE
 two
-three
-four
+3
"""


def test_unified_lines_say_what_each_line_is():
    kinds = [line["kind"] for line in unified_lines(PATCH)]
    assert kinds == ["head", "head", "head", "head", "hunk", "del", "add", "ctx", "del", "del", "add"]


def test_split_rows_pair_removals_with_additions_and_number_both_sides():
    rows = [r for r in split_rows(PATCH) if r["kind"] not in ("head", "hunk")]
    assert [(r["old_no"], r["old"], r["new_no"], r["new"]) for r in rows] == [
        (1, "one", 1, "ONE"),
        (2, "two", 2, "two"),
        (3, "three", 3, "3"),
        (4, "four", None, None),
    ]
    assert [r["kind"] for r in rows] == ["change", "ctx", "change", "change"]
